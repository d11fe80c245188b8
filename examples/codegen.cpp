// codegen: the UserService through the client protoc-gen-stubkit generated
// from user.proto (myservice/v1/user.stubkit.h): typed calls, retries
// decided by the proto's declarations, listings as ranges, async forms.
//
//   codegen                                  # against an embedded server
//   codegen --target HOST:PORT [--token T]   # against user_server --fault-metadata
//
// Exits 0 when every step behaved as the UserService contract says, 1 otherwise.
#include <chrono>
#include <iostream>
#include <string>

#include "example.hpp"
#include "myservice/v1/user.stubkit.h"

using namespace std::chrono_literals;

namespace {

char const* idempotency_name(stubkit::Idempotency idempotency) {
  switch (idempotency) {
    case stubkit::Idempotency::kNoSideEffects:
      return "NO_SIDE_EFFECTS";
    case stubkit::Idempotency::kIdempotent:
      return "IDEMPOTENT";
    case stubkit::Idempotency::kUnknown:
      break;
  }
  return "-";
}

}  // namespace

int main(int argc, char** argv) {
  auto const flags = example::parse(argc, argv, "codegen",
                                    "the generated UserServiceClient: typed calls, retries, listings, async",
                                    "user_server --fault-metadata");
  example::Servers servers(flags);
  std::cout << "using " << servers.describe() << "\n";

  // What the generator read from user.proto, per method.
  for (auto const& method : myservice::v1::UserServiceMethods::kMethods) {
    std::cout << "method " << method.full_name << ": " << idempotency_name(method.idempotency)
              << (method.request_id_field != 0 ? ", request_id" : "") << "\n";
  }

  // Every call of this client: 5 s, retried where the proto makes it safe.
  stubkit::ClientOptions defaults;
  defaults.call.timeout = 5s;
  defaults.call.retry = stubkit::RetryPolicy::standard();
  defaults.paginate.page_size = 2;
  myservice::v1::UserServiceClient users(servers.channel(), defaults);
  std::string const tag = example::run_tag();
  bool ok = true;

  // CreateUser with a request_id: retried through a failed first attempt.
  for (std::string name : {"ada", "grace", "linus"}) {
    myservice::v1::CreateUserRequest create;
    create.set_request_id("codegen-" + name + "-" + tag);
    create.mutable_user()->set_id(name + "-" + tag);
    create.mutable_user()->set_email(name + "@example.com");
    stubkit::CallOptions options = users.options().call;
    stubkit::RetryReport report;
    options.report = &report;
    options.metadata.emplace_back("stubkit-fault", "code=UNAVAILABLE,attempts=1");
    auto created = users.create_user(create, options);
    std::cout << "create_user " << name << ": " << (created ? "ok" : created.error().to_string()) << " after "
              << report.attempts << " attempts\n";
    ok = ok && created.ok();
  }

  // GetUser is NO_SIDE_EFFECTS: the table says so, the call retries.
  myservice::v1::GetUserRequest get;
  get.set_id("ada-" + tag);
  auto ada = users.get_user(get);
  std::cout << "get_user: " << (ada ? ada->email() : ada.error().to_string()) << "\n";
  ok = ok && ada.ok();

  // ListUsers is an AIP-158 List method: a range over every page.
  int listed = 0;
  for (auto& user : users.list_users()) {
    if (!user) {
      std::cout << "list_users: " << user.error().to_string() << "\n";
      ok = false;
      break;
    }
    ++listed;
  }
  std::cout << "list_users: " << listed << " users, 2 per page\n";
  ok = ok && listed >= 3;

  // The async form of the same call, completing as a future.
  get.set_id("nobody-" + tag);
  auto missing = users.get_user_async(get, stubkit::use_future).get();
  std::cout << "get_user_async: " << (missing ? "found?" : stubkit::code_name(missing.error().code()))
            << "\n";
  ok = ok && !missing && missing.error().code() == grpc::StatusCode::NOT_FOUND;

  std::cout << (ok ? "codegen: done\n" : "codegen: stopped at the first failure\n");
  return ok ? 0 : 1;
}
