// The embedded UserService: a real, thread-safe, in-memory implementation of
// myservice.v1.UserService for tests and demos. EmbeddedServer
// (embedded_server.hpp) serves it in-process or over TCP; user_server is the
// same service as a standalone program.
//
// Semantics (see docs/embedded-server.md):
// - CreateUser: an empty user.id gets a server-assigned id; an existing id
//   gives ALREADY_EXISTS "User <id> already exists"; a request_id seen before
//   returns the first result instead of creating again, unless it came with
//   another request (FAILED_PRECONDITION); the latest request_id_capacity
//   ids are remembered (AIP-155). created_at is set by
//   the server.
// - GetUser: NOT_FOUND "User <id> not found" for a missing id.
// - ListUsers: page_size 0 means 50, at most 100 (configurable), negative is
//   INVALID_ARGUMENT. Pages follow id order and tokens are tamper-evident
//   cursors, so every user that exists during the whole listing is returned
//   exactly once, whatever is created or deleted meanwhile.
// - UpdateUser follows AIP-134: the update_mask paths, or without a mask
//   every field the request populates; "*" replaces all but id and
//   created_at. DeleteUser removes. Both report NOT_FOUND for a missing id,
//   except a delete with allow_missing, which succeeds (AIP-135).
// - WatchUsers streams created/updated/deleted events and heartbeats; it can
//   resume after a sequence number from a bounded history.
// - BulkCreateUsers creates each streamed request when the stream ends and
//   reports per-item failures; a cancelled stream creates nothing.
// - With data_path, every change is written to an append-only journal before
//   the reply and replayed on start (detail/journal.hpp).
// - Chat relays each message to every other open Chat stream; it sends its
//   initial metadata once the stream is registered.
// - With fault_metadata, a client can ask for faults with the stubkit-fault
//   request header (FaultInjector::kFaultHeader).
// Errors from bad input carry google.rpc.BadRequest naming the field; NOT_FOUND
// and ALREADY_EXISTS carry google.rpc.ResourceInfo; auth failures carry
// google.rpc.ErrorInfo.
#ifndef STUBKIT_TESTING_USER_SERVICE_HPP
#define STUBKIT_TESTING_USER_SERVICE_HPP

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "google/protobuf/util/field_mask_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"
#include "myservice/v1/user.grpc.pb.h"
#include "stubkit/status.hpp"
#include "stubkit/testing/detail/journal.hpp"
#include "stubkit/testing/detail/page_token.hpp"
#include "stubkit/testing/fault_injector.hpp"

namespace stubkit::testing {

/// Configuration of the embedded UserService.
struct UserServiceOptions {
  /// WatchUsers sends UserEvent{type: "heartbeat"} this often (and once at start).
  std::chrono::milliseconds heartbeat_interval{5000};
  /// When non-empty, every UserService call needs `authorization: Bearer <token>`.
  std::string token;
  /// How many change events WatchUsers can replay for a resuming client.
  std::size_t event_history = 1024;
  /// Key of the page tokens' HMAC-SHA256 tag, 16 to 4096 bytes. Servers
  /// with the same key accept each other's tokens. When empty, the key is:
  /// read from `page_token_key_file` if set; else, with `data_path`, kept in
  /// the file `data_path + ".key"` (32 random bytes, mode 0600, created on
  /// first start), so tokens survive a restart; else random per service.
  std::string page_token_key;
  /// A file holding the page-token key (its bytes, as they are). It must
  /// exist: make one with `head -c 32 /dev/urandom > FILE` and give it to
  /// every backend that should accept the others' tokens.
  std::string page_token_key_file;
  /// ListUsers never returns more users than this per page (the reference
  /// server's 100). Raise it to serve large pages, e.g. in benchmarks.
  int max_page_size = 100;
  /// Source of created_at and event times; empty = std::chrono::system_clock.
  std::function<std::chrono::system_clock::time_point()> clock;
  /// When non-empty, users live in this append-only journal file as well as
  /// in memory: every create, update and delete is written to it before the
  /// reply, and it is replayed when the service starts (see
  /// detail/journal.hpp). Empty = memory only.
  std::string data_path;
  /// Also fdatasync the journal before each reply: survives the machine
  /// going down, not just the process. Slower.
  bool sync_data = false;
  /// When non-empty, every reply carries it in the trailing metadata
  /// `stubkit-server-id`, so a client can tell which backend answered.
  std::string server_id;
  /// How many CreateUser request_ids are remembered (AIP-155): the oldest is
  /// forgotten when a new one would exceed this, live and on journal replay
  /// alike. A retry after that creates again.
  std::size_t request_id_capacity = 10000;
  /// Honour the `stubkit-fault` request header (FaultInjector::kFaultHeader):
  /// any client may then ask for failures and latency, so examples and
  /// tests can show retries against a server in another process. Testing
  /// only; off by default, and the header is ignored when off.
  bool fault_metadata = false;
  /// A share of calls delayed (FaultInjector::TailLatency): a slow backend
  /// for hedging. Off by default; change it live with
  /// `faults().set_tail_latency()`.
  FaultInjector::TailLatency tail_latency;
  /// Receives warnings such as a torn journal record ignored on start;
  /// empty = standard error.
  std::function<void(std::string const&)> warn;
};

/// The UserService implementation. Thread-safe; one instance serves any
/// number of concurrent calls. Must outlive the grpc::Server it is
/// registered with.
class UserServiceImpl final : public myservice::v1::UserService::WithRawCallbackMethod_BulkCreateUsers<
                                  myservice::v1::UserService::Service> {
 public:
  using User = myservice::v1::User;
  using UserEvent = myservice::v1::UserEvent;

  static constexpr int kDefaultPageSize = 50;
  static constexpr std::size_t kMaxIdLength = 128;
  /// One BulkCreateUsers call is held in memory until its stream ends, so
  /// it is bounded.
  static constexpr std::size_t kMaxBulkItems = 100000;
  static constexpr std::size_t kMaxBulkBytes = std::size_t{64} << 20;

  /// Replays the journal at `options.data_path`, if any, and sets up the
  /// page-token key; throws std::runtime_error when the journal cannot be
  /// opened or is corrupt, or the key cannot be read or made, and
  /// std::invalid_argument when `page_token_key` has a bad size or
  /// `tail_latency` unusable settings.
  explicit UserServiceImpl(UserServiceOptions options = {})
      : options_(std::move(options)), faults_(User::descriptor()->file()->FindServiceByName("UserService")) {
    faults_.set_tail_latency(options_.tail_latency);  // first: unusable settings touch no file
    auto const warn = options_.warn ? options_.warn : [](std::string const& m) { std::cerr << m << "\n"; };
    if (!options_.data_path.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      journal_ = std::make_unique<detail::Journal>(
          options_.data_path, options_.sync_data,
          [this](char kind, std::string_view payload) { return replay_locked(kind, payload); }, warn);
    }
    // After the journal: a data path that is refused gets no key file.
    tokens_.emplace(page_token_key(options_, warn));
  }

  /// The record kinds of the journal.
  static constexpr char kCreated = 'C';  // payload: CreateUserRequest, user as stored
  static constexpr char kUpdated = 'U';  // payload: User as stored
  static constexpr char kDeleted = 'D';  // payload: DeleteUserRequest

  /// Planned faults for this service's methods.
  FaultInjector& faults() { return faults_; }

  /// Ends every WatchUsers stream with OK and refuses new ones: the first
  /// step of a graceful shutdown.
  void begin_shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      shutting_down_ = true;
    }
    changed_.notify_all();
  }

  /// Creates `count` users with server-assigned ids (for demos and load).
  void preload(int count) {
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < count; ++i) {
      myservice::v1::CreateUserRequest request;
      auto* user = request.mutable_user();
      user->set_display_name("Preloaded user " + std::to_string(i + 1));
      user->set_role(myservice::v1::USER_ROLE_MEMBER);
      User created;
      create_locked(request, &created);
    }
  }

  /// How many users are stored now.
  std::size_t user_count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return users_.size();
  }

  /// How many calls stopped early because their caller cancelled or their
  /// deadline passed while the server was still working on them.
  std::int64_t cancelled_calls() const { return cancelled_calls_.load(); }

  /// How many peers (client connections, as grpc::ServerContext::peer()
  /// names them: "ipv4:127.0.0.1:PORT") have called, up to kMaxPeers.
  static constexpr std::size_t kMaxPeers = 4096;
  std::size_t peer_count() const {
    std::lock_guard<std::mutex> lock(peers_mu_);
    return peers_.size();
  }

  /// The sequence number of the latest change event (0: none yet).
  std::int64_t last_sequence() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_sequence_;
  }

  /// A request message that does not parse (bad protobuf, or invalid UTF-8
  /// in a string field) reaches no handler: gRPC answers INTERNAL with no
  /// message. EmbeddedServer's interceptor replaces that with this status;
  /// BulkCreateUsers, which reads raw bytes, returns it itself.
  ///
  /// The status for a call whose request message `type` (number `index` of
  /// a stream, counted from 0; -1 for the only one) did not parse.
  static grpc::Status malformed_request(std::string const& type, int index = -1) {
    google::rpc::ErrorInfo info;
    info.set_reason("MALFORMED_REQUEST");
    info.set_domain("myservice.v1");
    (*info.mutable_metadata())["message_type"] = type;
    std::string const which = index < 0 ? "the request" : "request message " + std::to_string(index);
    return stubkit::Error(grpc::StatusCode::INVALID_ARGUMENT,
                          which + " is not a valid " + type +
                              ": malformed protobuf, or a string field holding invalid UTF-8 "
                              "(proto3 strings must be UTF-8; binary data belongs in bytes fields)")
        .with(info)
        .to_grpc_status();
  }

  /// How many WatchUsers and Chat streams are open now.
  int open_streams() const {
    std::lock_guard<std::mutex> lock(mu_);
    return open_streams_;
  }

  /// How many WatchUsers streams are open now.
  int watchers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return watchers_;
  }

  grpc::Status CreateUser(grpc::ServerContext* ctx, myservice::v1::CreateUserRequest const* request,
                          myservice::v1::CreateUserResponse* response) override {
    FaultInjector::Plan plan;
    if (auto s = admit(ctx, "CreateUser", &plan); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    return settle(plan, create_locked(*request, response->mutable_user()));
  }

  grpc::Status GetUser(grpc::ServerContext* ctx, myservice::v1::GetUserRequest const* request,
                       User* response) override {
    FaultInjector::Plan plan;
    if (auto s = admit(ctx, "GetUser", &plan); !s.ok()) return s;
    if (request->id().empty()) return bad_request("id", "id is required");
    std::lock_guard<std::mutex> lock(mu_);
    auto it = users_.find(request->id());
    if (it == users_.end()) return not_found(request->id());
    *response = it->second;
    return settle(plan, grpc::Status::OK);
  }

  grpc::Status ListUsers(grpc::ServerContext* ctx, myservice::v1::ListUsersRequest const* request,
                         myservice::v1::ListUsersResponse* response) override {
    FaultInjector::Plan plan;
    if (auto s = admit(ctx, "ListUsers", &plan); !s.ok()) return s;
    if (request->page_size() < 0) {
      return bad_request("page_size",
                         "page_size must not be negative, got " + std::to_string(request->page_size()));
    }
    std::optional<std::string> after;
    if (!request->page_token().empty()) {
      after = tokens_->decode(request->page_token());
      if (!after) {
        return bad_request("page_token",
                           "page_token is not a token this server issued (garbled or modified)");
      }
    }
    int const asked = request->page_size() == 0 ? kDefaultPageSize : request->page_size();
    int const size = std::min(asked, std::max(options_.max_page_size, 1));
    std::lock_guard<std::mutex> lock(mu_);
    auto it = after ? users_.upper_bound(*after) : users_.begin();
    for (int n = 0; n < size && it != users_.end(); ++n, ++it) {
      *response->add_users() = it->second;
    }
    if (it != users_.end()) {
      response->set_next_page_token(tokens_->encode(std::prev(it)->first));
    }
    return settle(plan, grpc::Status::OK);
  }

  grpc::Status UpdateUser(grpc::ServerContext* ctx, myservice::v1::UpdateUserRequest const* request,
                          User* response) override {
    using google::protobuf::util::FieldMaskUtil;
    FaultInjector::Plan plan;
    if (auto s = admit(ctx, "UpdateUser", &plan); !s.ok()) return s;
    if (request->user().id().empty()) return bad_request("user.id", "user.id is required");
    auto const& paths = request->update_mask().paths();
    bool const replace_all = paths.size() == 1 && paths[0] == "*";
    for (auto const& path : paths) {
      if (path == "*" && !replace_all) {
        return bad_request("update_mask.paths", "'*' must be the only path of update_mask");
      }
      if (path == "*") continue;
      if (path == "id" || path.rfind("id.", 0) == 0 || path == "created_at" ||
          path.rfind("created_at.", 0) == 0) {
        return bad_request("update_mask.paths",
                           "field '" + path + "' cannot be updated (it is set by the server)");
      }
      if (!FieldMaskUtil::GetFieldDescriptors(User::descriptor(), path, nullptr)) {
        return bad_request("update_mask.paths", "unknown field '" + path + "' in update_mask");
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto it = users_.find(request->user().id());
    if (it == users_.end()) return not_found(request->user().id());
    User stored = it->second;
    if (replace_all) {
      // "*": a full replacement; what the request leaves unset is cleared.
      auto const created_at = stored.created_at();
      stored = request->user();
      *stored.mutable_created_at() = created_at;
    } else {
      // Named paths, or (no mask) every field the request populates.
      google::protobuf::FieldMask mask = request->update_mask();
      if (paths.empty()) mask = populated_fields(request->user());
      // The map is replaced directly: protobuf's reflection path for map
      // fields in MergeMessageTo crashed under ThreadSanitizer, and the
      // intent (replace the whole map) needs no reflection.
      google::protobuf::FieldMask rest;
      for (auto const& path : mask.paths()) {
        if (path == "metadata") {
          *stored.mutable_metadata() = request->user().metadata();
        } else {
          rest.add_paths(path);
        }
      }
      FieldMaskUtil::MergeOptions merge;
      merge.set_replace_message_fields(true);
      merge.set_replace_repeated_fields(true);
      FieldMaskUtil::MergeMessageTo(request->user(), rest, merge, &stored);
    }
    if (auto s = persist_locked(kUpdated, stored); !s.ok()) return s;
    *response = stored;
    apply_update_locked(std::move(stored));
    return settle(plan, grpc::Status::OK);
  }

  grpc::Status DeleteUser(grpc::ServerContext* ctx, myservice::v1::DeleteUserRequest const* request,
                          google::protobuf::Empty* /*response*/) override {
    FaultInjector::Plan plan;
    if (auto s = admit(ctx, "DeleteUser", &plan); !s.ok()) return s;
    if (request->id().empty()) return bad_request("id", "id is required");
    std::lock_guard<std::mutex> lock(mu_);
    if (users_.count(request->id()) == 0) {
      return request->allow_missing() ? settle(plan, grpc::Status::OK) : not_found(request->id());
    }
    if (auto s = persist_locked(kDeleted, *request); !s.ok()) return s;
    apply_delete_locked(request->id());
    return settle(plan, grpc::Status::OK);
  }

  grpc::Status WatchUsers(grpc::ServerContext* ctx, myservice::v1::WatchUsersRequest const* request,
                          grpc::ServerWriter<UserEvent>* writer) override {
    FaultInjector::Plan plan;
    if (auto s = admit(ctx, "WatchUsers", &plan); !s.ok()) return s;
    StreamCount counted(this, /*watcher=*/true);
    std::unique_lock<std::mutex> lock(mu_);
    std::int64_t cursor = request->after_sequence();
    if (cursor < 0) return bad_request("after_sequence", "after_sequence must not be negative");
    if (cursor > last_sequence_) {
      return bad_request("after_sequence", "after_sequence " + std::to_string(cursor) +
                                               " is ahead of the latest event " +
                                               std::to_string(last_sequence_));
    }
    if (cursor == 0) cursor = last_sequence_;
    if (auto s = check_history_locked(cursor); !s.ok()) return s;
    auto next_heartbeat = std::chrono::steady_clock::now();
    int sent = 0;
    while (!shutting_down_) {
      std::vector<UserEvent> batch;
      if (auto s = check_history_locked(cursor); !s.ok()) return s;
      for (auto const& e : history_) {
        if (e.sequence() > cursor) batch.push_back(e);
      }
      if (!batch.empty()) cursor = batch.back().sequence();
      auto const now = std::chrono::steady_clock::now();
      if (now >= next_heartbeat) {
        UserEvent heartbeat;
        heartbeat.set_type("heartbeat");
        heartbeat.set_sequence(cursor);
        *heartbeat.mutable_time() = timestamp_now();
        batch.push_back(std::move(heartbeat));
        next_heartbeat = now + options_.heartbeat_interval;
      }
      if (!batch.empty()) {
        lock.unlock();
        for (auto const& event : batch) {
          if (plan.close_stream_after && sent >= *plan.close_stream_after) {
            return grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream closed by fault injection");
          }
          if (!writer->Write(event)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
          ++sent;
        }
        lock.lock();
        continue;
      }
      if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
      // The sync API has no cancellation callback: wake up now and then to look.
      changed_.wait_until(lock, std::min(next_heartbeat, now + kCancellationPoll));
    }
    return grpc::Status::OK;
  }

  // Raw bytes in, parsed here: gRPC's typed sync API reports a message that
  // does not parse as the end of the stream, which would store what came
  // before it and silently drop the rest.
  grpc::ServerReadReactor<grpc::ByteBuffer>* BulkCreateUsers(grpc::CallbackServerContext* ctx,
                                                             grpc::ByteBuffer* response) override {
    return new BulkCreateReactor(this, ctx, response);
  }

  grpc::Status Chat(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<myservice::v1::ChatMessage, myservice::v1::ChatMessage>* stream) override {
    if (auto s = admit(ctx, "Chat"); !s.ok()) return s;
    auto self = std::make_shared<ChatSession>(stream);
    {
      std::lock_guard<std::mutex> lock(mu_);
      chat_sessions_.push_back(self);
    }
    // The initial metadata says "registered": a client that waits for it
    // (BidiSession::wait_for_initial_metadata) misses no message after it.
    self->send_initial_metadata();
    StreamCount counted(this, /*watcher=*/false);
    myservice::v1::ChatMessage message;
    while (stream->Read(&message)) {
      if (!message.has_sent_at()) *message.mutable_sent_at() = timestamp_now();
      std::vector<std::shared_ptr<ChatSession>> peers;
      {
        std::lock_guard<std::mutex> lock(mu_);
        peers = chat_sessions_;
      }
      for (auto const& peer : peers) {
        if (peer != self) peer->deliver(message);
      }
    }
    // Unregister, then wait out any delivery into this stream in progress:
    // after close() no other thread touches `stream`.
    {
      std::lock_guard<std::mutex> lock(mu_);
      chat_sessions_.erase(std::remove(chat_sessions_.begin(), chat_sessions_.end(), self),
                           chat_sessions_.end());
    }
    self->close();
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    return grpc::Status::OK;
  }

 private:
  static constexpr auto kCancellationPoll = std::chrono::milliseconds(20);

  // BulkCreateUsers: collects the stream, then creates it all at once.
  class BulkCreateReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
   public:
    BulkCreateReactor(UserServiceImpl* service, grpc::CallbackServerContext* ctx, grpc::ByteBuffer* response)
        : service_(service), ctx_(ctx), response_(response) {
      if (auto s = service_->admit(ctx, "BulkCreateUsers"); !s.ok()) {
        Finish(s);
        return;
      }
      StartRead(&buffer_);
    }

    void OnReadDone(bool ok) override {
      if (!ok) {  // the end of the stream, or a cancellation
        Finish(service_->bulk_create(*ctx_, requests_, response_));
        return;
      }
      myservice::v1::CreateUserRequest request;
      if (!grpc::SerializationTraits<myservice::v1::CreateUserRequest>::Deserialize(&buffer_, &request)
               .ok()) {
        Finish(malformed_request(request.GetDescriptor()->full_name(), static_cast<int>(requests_.size())));
        return;
      }
      bytes_ += request.ByteSizeLong();
      if (requests_.size() == kMaxBulkItems || bytes_ > kMaxBulkBytes) {
        Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "BulkCreateUsers takes at most " + std::to_string(kMaxBulkItems) + " users and " +
                                std::to_string(kMaxBulkBytes >> 20) + " MiB per call; nothing was created"));
        return;
      }
      requests_.push_back(std::move(request));
      StartRead(&buffer_);
    }

    void OnDone() override { delete this; }

   private:
    UserServiceImpl* service_;
    grpc::CallbackServerContext* ctx_;
    grpc::ByteBuffer* response_;
    grpc::ByteBuffer buffer_;
    std::vector<myservice::v1::CreateUserRequest> requests_;
    std::size_t bytes_ = 0;
  };

  grpc::Status bulk_create(grpc::ServerContextBase const& ctx,
                           std::vector<myservice::v1::CreateUserRequest> const& requests,
                           grpc::ByteBuffer* out) {
    if (ctx.IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    myservice::v1::BulkResp response;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (std::size_t index = 0; index < requests.size(); ++index) {
        User created;
        grpc::Status const s = create_locked(requests[index], &created);
        if (s.ok()) {
          response.set_created(response.created() + 1);
        } else {
          auto* failure = response.add_failures();
          failure->set_index(static_cast<std::int32_t>(index));
          failure->set_user_id(requests[index].user().id());
          failure->set_code(static_cast<std::int32_t>(s.error_code()));
          failure->set_message(s.error_message());
        }
      }
    }
    bool own = false;
    return grpc::SerializationTraits<myservice::v1::BulkResp>::Serialize(response, out, &own);
  }

  // One open Chat stream that other streams deliver messages into.
  class ChatSession {
   public:
    using Stream = grpc::ServerReaderWriter<myservice::v1::ChatMessage, myservice::v1::ChatMessage>;
    explicit ChatSession(Stream* stream) : stream_(stream) {}
    // gRPC allows one Write at a time per stream, concurrent with its Read.
    void deliver(myservice::v1::ChatMessage const& message) {
      std::lock_guard<std::mutex> lock(mu_);
      if (stream_ != nullptr) stream_->Write(message);
      metadata_sent_ = true;  // a Write sends it first
    }
    void send_initial_metadata() {
      std::lock_guard<std::mutex> lock(mu_);
      if (stream_ != nullptr && !metadata_sent_) stream_->SendInitialMetadata();
      metadata_sent_ = true;
    }
    void close() {
      std::lock_guard<std::mutex> lock(mu_);
      stream_ = nullptr;
    }

   private:
    std::mutex mu_;
    Stream* stream_;
    bool metadata_sent_ = false;
  };

  // Counts an open stream for as long as it lives.
  class StreamCount {
   public:
    StreamCount(UserServiceImpl* service, bool watcher) : service_(service), watcher_(watcher) { add(1); }
    ~StreamCount() { add(-1); }
    StreamCount(StreamCount const&) = delete;
    StreamCount& operator=(StreamCount const&) = delete;

   private:
    void add(int n) {
      std::lock_guard<std::mutex> lock(service_->mu_);
      service_->open_streams_ += n;
      if (watcher_) service_->watchers_ += n;
    }
    UserServiceImpl* service_;
    bool watcher_;
  };

  static std::string page_token_key(UserServiceOptions const& options,
                                    std::function<void(std::string const&)> const& warn) {
    if (!options.page_token_key.empty()) return options.page_token_key;
    if (!options.page_token_key_file.empty())
      return detail::read_page_token_key(options.page_token_key_file, warn);
    if (!options.data_path.empty())
      return detail::load_or_create_page_token_key(options.data_path + ".key", warn);
    return detail::PageTokenCodec::random_key();
  }

  // Authentication, then planned faults, then injected latency.
  grpc::Status admit(grpc::ServerContextBase* ctx, std::string_view method,
                     FaultInjector::Plan* plan_out = nullptr) {
    if (!options_.server_id.empty()) ctx->AddTrailingMetadata("stubkit-server-id", options_.server_id);
    {
      std::string peer = ctx->peer();
      std::lock_guard<std::mutex> lock(peers_mu_);
      if (peers_.size() < kMaxPeers) peers_.insert(std::move(peer));
    }
    if (auto s = authenticate(*ctx); !s.ok()) return s;
    auto const& metadata = ctx->client_metadata();
    auto header = [&](char const* name) {
      auto it = metadata.find(name);
      return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
    };
    std::string attempt = header("stubkit-previous-rpc-attempts");
    FaultInjector::Plan plan = faults_.take(method, attempt);
    if (options_.fault_metadata) {
      if (auto fault = metadata.find(FaultInjector::kFaultHeader); fault != metadata.end()) {
        // stubkit's count, else gRPC's own; anything not a count is 0.
        int previous = 0;
        if (!absl::SimpleAtoi(attempt, &previous) &&
            !absl::SimpleAtoi(header("grpc-previous-rpc-attempts"), &previous)) {
          previous = 0;
        }
        previous = std::max(previous, 0);
        auto s = FaultInjector::apply_header(std::string_view(fault->second.data(), fault->second.size()),
                                             previous, plan);
        if (!s.ok()) return s;
      }
    }
    // Capped, so that no add_latency value overflows the clock's arithmetic.
    std::chrono::milliseconds const cap = std::chrono::hours(24);
    auto const wait = std::min(plan.latency, cap) + std::min(plan.tail_delay, cap);
    if (wait.count() > 0 && !sleep_unless_cancelled(*ctx, wait)) {
      ++cancelled_calls_;
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    }
    if (plan.failure) {
      if (plan.pushback) ctx->AddTrailingMetadata("grpc-retry-pushback-ms", *plan.pushback);
      return *plan.failure;
    }
    if (plan_out != nullptr) *plan_out = std::move(plan);
    return grpc::Status::OK;
  }

  // Whether `sent` asks for what created `stored`: equal but for what the
  // server set (an assigned id, created_at).
  static bool same_creation(User sent, User stored) {
    if (sent.id().empty()) sent.set_id(stored.id());
    sent.clear_created_at();
    stored.clear_created_at();
    return google::protobuf::util::MessageDifferencer::Equals(sent, stored);
  }

  static grpc::Status request_id_reused(std::string const& request_id) {
    google::rpc::PreconditionFailure failure;
    auto* violation = failure.add_violations();
    violation->set_type("REQUEST_ID_REUSED");
    violation->set_subject("request_id");
    violation->set_description("request_id '" + request_id + "' was used before by a different request");
    return stubkit::Error(grpc::StatusCode::FAILED_PRECONDITION,
                          "request_id '" + request_id + "' was used before by a different request")
        .with(failure)
        .to_grpc_status();
  }

  // AIP-134's implied mask: the fields `user` populates, output-only ones
  // (id names the user; created_at is the server's) left out.
  static google::protobuf::FieldMask populated_fields(User const& user) {
    std::vector<google::protobuf::FieldDescriptor const*> fields;
    user.GetReflection()->ListFields(user, &fields);
    google::protobuf::FieldMask mask;
    for (auto const* field : fields) {
      if (field->name() != "id" && field->name() != "created_at") mask.add_paths(field->name());
    }
    return mask;
  }

  // The status a unary handler returns: its own, unless a fault says the
  // reply is lost after the work was done.
  static grpc::Status settle(FaultInjector::Plan const& plan, grpc::Status status) {
    if (status.ok() && plan.failure_after) return *plan.failure_after;
    return status;
  }

  grpc::Status authenticate(grpc::ServerContextBase const& ctx) const {
    if (options_.token.empty()) return grpc::Status::OK;
    auto const& metadata = ctx.client_metadata();
    auto it = metadata.find("authorization");
    std::string_view reason;
    if (it == metadata.end()) {
      reason = "missing bearer token";
    } else {
      std::string_view const value(it->second.data(), it->second.size());
      if (!constant_time_equal(value, "Bearer " + options_.token)) reason = "invalid bearer token";
    }
    if (reason.empty()) return grpc::Status::OK;
    google::rpc::ErrorInfo info;
    info.set_reason(it == metadata.end() ? "MISSING_TOKEN" : "INVALID_TOKEN");
    info.set_domain("myservice.v1");
    return stubkit::Error(grpc::StatusCode::UNAUTHENTICATED, std::string(reason)).with(info).to_grpc_status();
  }

  // Compares in time independent of where the strings differ (the length
  // of the expected token is not a secret worth hiding).
  static bool constant_time_equal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
  }

  static bool sleep_unless_cancelled(grpc::ServerContextBase const& ctx, std::chrono::milliseconds d) {
    auto const until = std::chrono::steady_clock::now() + d;
    while (!ctx.IsCancelled()) {
      auto const now = std::chrono::steady_clock::now();
      if (now >= until) return true;
      std::this_thread::sleep_for(
          std::min<std::chrono::steady_clock::duration>(until - now, std::chrono::milliseconds(2)));
    }
    return false;
  }

  static grpc::Status bad_request(std::string field, std::string description) {
    return stubkit::invalid_argument(std::move(field), std::move(description)).to_grpc_status();
  }

  static grpc::Status user_error(grpc::StatusCode code, std::string const& id, std::string message) {
    return stubkit::resource_error(code, std::move(message), "type.googleapis.com/myservice.v1.User", id)
        .to_grpc_status();
  }

  static grpc::Status not_found(std::string const& id) {
    return user_error(grpc::StatusCode::NOT_FOUND, id, "User " + id + " not found");
  }

  static bool valid_id(std::string_view id) {
    if (id.size() > kMaxIdLength) return false;
    return std::all_of(id.begin(), id.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
             c == '_' || c == '.' || c == '@' || c == '~';
    });
  }

  google::protobuf::Timestamp timestamp_now() const {
    auto const now = options_.clock ? options_.clock() : std::chrono::system_clock::now();
    auto const nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch());
    return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(nanos.count());
  }

  std::string next_id_locked() {
    std::string id;
    do {
      std::string const digits = std::to_string(++id_counter_);
      // Built by appending: GCC 12 at -O3 in C++20 warns falsely (-Wrestrict)
      // on "u" + std::string(...).
      id.assign(1, 'u').append(digits.size() < 8 ? 8 - digits.size() : 0, '0').append(digits);
    } while (users_.count(id) != 0);
    return id;
  }

  grpc::Status create_locked(myservice::v1::CreateUserRequest const& request, User* out) {
    if (!request.request_id().empty()) {
      auto seen = by_request_id_.find(request.request_id());
      if (seen != by_request_id_.end()) {
        // AIP-155: a retry gets the first result (the user as created, even
        // if it was updated or deleted since); another request under the
        // same id is refused.
        if (!same_creation(request.user(), seen->second)) return request_id_reused(request.request_id());
        *out = seen->second;
        return grpc::Status::OK;
      }
    }
    if (!request.has_user()) return bad_request("user", "user is required");
    User user = request.user();
    if (user.id().empty()) {
      user.set_id(next_id_locked());
    } else if (!valid_id(user.id())) {
      return bad_request("user.id", "user.id must be at most 128 characters of [A-Za-z0-9-_.@~]");
    }
    if (users_.count(user.id()) != 0) {
      return user_error(grpc::StatusCode::ALREADY_EXISTS, user.id(), "User " + user.id() + " already exists");
    }
    *user.mutable_created_at() = timestamp_now();
    myservice::v1::CreateUserRequest record;
    *record.mutable_user() = std::move(user);
    record.set_request_id(request.request_id());
    if (auto s = persist_locked(kCreated, record); !s.ok()) return s;
    *out = record.user();
    apply_create_locked(record);
    return grpc::Status::OK;
  }

  // The state changes, shared by live calls (after persist_locked) and the
  // journal replay.
  void apply_create_locked(myservice::v1::CreateUserRequest const& record) {
    User const& user = record.user();
    users_[user.id()] = user;
    if (!record.request_id().empty()) {
      // Known already only on replay with a larger capacity than the one
      // that forgot it: the newer record becomes the newest entry.
      if (by_request_id_.count(record.request_id()) != 0) {
        request_id_order_.erase(
            std::find(request_id_order_.begin(), request_id_order_.end(), record.request_id()));
      }
      by_request_id_[record.request_id()] = user;
      request_id_order_.push_back(record.request_id());
      while (request_id_order_.size() > options_.request_id_capacity) {
        by_request_id_.erase(request_id_order_.front());
        request_id_order_.pop_front();
      }
    }
    publish_locked("created", user);
  }

  void apply_update_locked(User user) {
    User& stored = users_[user.id()];
    stored = std::move(user);
    publish_locked("updated", stored);
  }

  void apply_delete_locked(std::string const& id) {
    auto it = users_.find(id);
    User removed = std::move(it->second);
    users_.erase(it);
    publish_locked("deleted", removed);
  }

  // Writes a change to the journal, if there is one, before it is applied
  // and acknowledged. A write that fails changes nothing.
  grpc::Status persist_locked(char kind, google::protobuf::MessageLite const& record) {
    if (!journal_) return grpc::Status::OK;
    std::string const error = journal_->append(kind, record.SerializeAsString());
    if (error.empty()) return grpc::Status::OK;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "cannot store the change: " + error);
  }

  // One journal record on start: false if it does not fit the state so far.
  bool replay_locked(char kind, std::string_view payload) {
    auto parse = [&](google::protobuf::MessageLite& m) {
      return m.ParseFromArray(payload.data(), static_cast<int>(payload.size()));
    };
    switch (kind) {
      case kCreated: {
        myservice::v1::CreateUserRequest record;
        if (!parse(record) || record.user().id().empty() || users_.count(record.user().id()) != 0) {
          return false;
        }
        note_id_locked(record.user().id());
        apply_create_locked(record);
        return true;
      }
      case kUpdated: {
        User user;
        if (!parse(user) || users_.count(user.id()) == 0) return false;
        apply_update_locked(std::move(user));
        return true;
      }
      case kDeleted: {
        myservice::v1::DeleteUserRequest record;
        if (!parse(record) || users_.count(record.id()) == 0) return false;
        apply_delete_locked(record.id());
        return true;
      }
      default:
        return false;
    }
  }

  // Server-assigned ids are never handed out twice, even after a restart.
  void note_id_locked(std::string const& id) {
    std::uint64_t n = 0;
    if (id.size() > 1 && id[0] == 'u' &&
        absl::SimpleAtoi(absl::string_view(id.data() + 1, id.size() - 1), &n)) {
      id_counter_ = std::max(id_counter_, n);
    }
  }

  void publish_locked(std::string type, User const& user) {
    UserEvent event;
    event.set_type(std::move(type));
    *event.mutable_user() = user;
    event.set_sequence(++last_sequence_);
    *event.mutable_time() = timestamp_now();
    history_.push_back(std::move(event));
    while (history_.size() > std::max<std::size_t>(options_.event_history, 1)) history_.pop_front();
    changed_.notify_all();
  }

  // A watcher whose cursor fell out of the retained history would miss
  // events: say so instead of skipping them silently.
  grpc::Status check_history_locked(std::int64_t cursor) const {
    if (history_.empty() || cursor >= history_.front().sequence() - 1) return grpc::Status::OK;
    return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "events after sequence " + std::to_string(cursor) +
                                                            " are no longer retained (oldest is " +
                                                            std::to_string(history_.front().sequence()) +
                                                            "); list again and watch from there");
  }

  UserServiceOptions options_;
  std::optional<detail::PageTokenCodec> tokens_;  // set by the constructor
  FaultInjector faults_;

  mutable std::mutex mu_;
  std::condition_variable changed_;    // signalled on every event and on shutdown
  std::map<std::string, User> users_;  // id order = listing order
  std::map<std::string, User> by_request_id_;
  std::deque<std::string> request_id_order_;  // oldest first
  std::deque<UserEvent> history_;
  std::int64_t last_sequence_ = 0;
  std::uint64_t id_counter_ = 0;
  bool shutting_down_ = false;
  int open_streams_ = 0;
  int watchers_ = 0;
  std::vector<std::shared_ptr<ChatSession>> chat_sessions_;
  std::atomic<std::int64_t> cancelled_calls_{0};
  mutable std::mutex peers_mu_;  // only for peers_: taken on every call, never with mu_
  std::unordered_set<std::string> peers_;
  std::unique_ptr<detail::Journal> journal_;  // null without data_path
};

}  // namespace stubkit::testing

#endif  // STUBKIT_TESTING_USER_SERVICE_HPP
