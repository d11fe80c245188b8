// protoc-gen-stubkit: a protoc plugin that writes, for each .proto file,
//   <name>.stubkit.h       a typed stubkit client per service, the table of
//                          its methods (full name, kind, idempotency_level,
//                          AIP-155 request_id), PageTraits for its AIP-158
//                          List methods and a pool stub (XxxPoolStub: each
//                          call on the next of several channels);
//   <name>.stubkit_mock.h  a trompeloeil mock of each service's generated
//                          StubInterface, and the client over it, for tests.
// Both are headers only: beside protoc's own .pb.cc and gRPC's .grpc.pb.cc
// nothing more is compiled. Run it with gRPC's plugin:
//
//   protoc -I protos --cpp_out=out --grpc_out=out --stubkit_out=out
//          --plugin=protoc-gen-grpc=$(which grpc_cpp_plugin)
//          --plugin=protoc-gen-stubkit=$(which protoc-gen-stubkit) protos/x/v1/y.proto
//
// A service the plugin cannot serve (two methods whose C++ names collide, a
// generated name taken by a type of the package, an unknown parameter) is a
// protoc error naming the file and the method; nothing is written for it.
#include <google/protobuf/compiler/code_generator.h>
#include <google/protobuf/compiler/cpp/names.h>
#include <google/protobuf/compiler/plugin.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/io/printer.h>
#include <google/protobuf/io/zero_copy_stream.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace pb = google::protobuf;
using pb::compiler::cpp::QualifiedClassName;

// C++ keywords and alternative tokens (C++20), which no generated name may be.
std::set<std::string> const& cpp_keywords() {
  static std::set<std::string> const words{
      "alignas",     "alignof",   "and",        "and_eq",    "asm",      "auto",         "bitand",
      "bitor",       "bool",      "break",      "case",      "catch",    "char",         "char8_t",
      "char16_t",    "char32_t",  "class",      "compl",     "concept",  "const",        "consteval",
      "constexpr",   "constinit", "const_cast", "continue",  "co_await", "co_return",    "co_yield",
      "decltype",    "default",   "delete",     "do",        "double",   "dynamic_cast", "else",
      "enum",        "explicit",  "export",     "extern",    "false",    "float",        "for",
      "friend",      "goto",      "if",         "inline",    "int",      "long",         "mutable",
      "namespace",   "new",       "noexcept",   "not",       "not_eq",   "nullptr",      "operator",
      "or",          "or_eq",     "private",    "protected", "public",   "register",     "reinterpret_cast",
      "requires",    "return",    "short",      "signed",    "sizeof",   "static",       "static_assert",
      "static_cast", "struct",    "switch",     "template",  "this",     "thread_local", "throw",
      "true",        "try",       "typedef",    "typeid",    "typename", "union",        "unsigned",
      "using",       "virtual",   "void",       "volatile",  "wchar_t",  "while",        "xor",
      "xor_eq"};
  return words;
}

// `name`, or `name_` when it is a C++ keyword.
std::string ResolveKeyword(std::string const& name) {
  return cpp_keywords().count(name) != 0 ? name + "_" : name;
}

// A client method's name: `name_` for a keyword, for the names the client
// (and its mock) already has (stub(), options(), mock()), for the
// generated methods' parameter `request`, and for names of the client's
// own members (stubkit_*).
std::string client_name(std::string const& name) {
  bool const taken = name == "stub" || name == "options" || name == "mock" || name == "request" ||
                     name.rfind("stubkit_", 0) == 0;
  return taken ? name + "_" : ResolveKeyword(name);
}

// "GetUser" -> "get_user", "ListHTTPRoutes" -> "list_http_routes",
// "getV2Thing" -> "get_v2_thing".
std::string snake_case(std::string const& name) {
  std::string out;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char const c = name[i];
    bool const upper = std::isupper(static_cast<unsigned char>(c)) != 0;
    if (upper && i > 0 && !out.empty() && out.back() != '_') {
      char const prev = name[i - 1];
      bool const prev_lower_or_digit = std::islower(static_cast<unsigned char>(prev)) != 0 ||
                                       std::isdigit(static_cast<unsigned char>(prev)) != 0;
      bool const acronym_end = std::isupper(static_cast<unsigned char>(prev)) != 0 && i + 1 < name.size() &&
                               std::islower(static_cast<unsigned char>(name[i + 1])) != 0;
      if (prev_lower_or_digit || acronym_end) out += '_';
    }
    out += upper ? static_cast<char>(std::tolower(static_cast<unsigned char>(c))) : c;
  }
  return out;
}

std::string file_stem(std::string const& proto) {
  return proto.size() > 6 && proto.compare(proto.size() - 6, 6, ".proto") == 0
             ? proto.substr(0, proto.size() - 6)
             : proto;
}

// A macro name for `path`: letters and digits upper-cased, every other
// character as _XX (its hex code), so "a/b_c" and "a/b/c" differ.
std::string guard_of(std::string const& path) {
  static char const hex[] = "0123456789ABCDEF";
  std::string guard = "STUBKIT_GENERATED_";
  for (char c : path) {
    auto const u = static_cast<unsigned char>(c);
    if (std::isalnum(u) != 0) {
      guard += static_cast<char>(std::toupper(u));
    } else {
      guard += '_';
      guard += hex[u >> 4];
      guard += hex[u & 15];
    }
  }
  return guard;
}

// "a.b.c" -> "a::b::c" (empty: the global namespace).
std::string cpp_namespace(std::string const& package) {
  std::string out;
  for (char c : package) out += c == '.' ? std::string("::") : std::string(1, c);
  return out;
}

enum class Kind { kUnary, kServerStreaming, kClientStreaming, kBidi };

Kind kind_of(pb::MethodDescriptor const* m) {
  if (m->client_streaming()) return m->server_streaming() ? Kind::kBidi : Kind::kClientStreaming;
  return m->server_streaming() ? Kind::kServerStreaming : Kind::kUnary;
}

char const* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kUnary:
      return "kUnary";
    case Kind::kServerStreaming:
      return "kServerStreaming";
    case Kind::kClientStreaming:
      return "kClientStreaming";
    case Kind::kBidi:
      return "kBidiStreaming";
  }
  return "kUnary";
}

char const* kind_words(Kind kind) {
  switch (kind) {
    case Kind::kUnary:
      return "unary";
    case Kind::kServerStreaming:
      return "server streaming";
    case Kind::kClientStreaming:
      return "client streaming";
    case Kind::kBidi:
      return "bidirectional streaming";
  }
  return "unary";
}

bool is_integer(pb::FieldDescriptor const* f) {
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return true;
    default:
      return false;
  }
}

bool is_single_string(pb::FieldDescriptor const* f) {
  return f != nullptr && !f->is_repeated() && f->type() == pb::FieldDescriptor::TYPE_STRING;
}

// An AIP-158 List method: unary; the request has an integer `page_size` and
// a string `page_token`; the response a string `next_page_token` and a
// repeated (non-map) field, the first declared one if there are several.
struct Listing {
  pb::FieldDescriptor const* items = nullptr;  // set: the method pages
  std::string why_not;                         // else, when it looked like one: why it is not
};

Listing listing_of(pb::MethodDescriptor const* m) {
  Listing listing;
  if (kind_of(m) != Kind::kUnary) return listing;
  auto const* request = m->input_type();
  auto const* response = m->output_type();
  auto const* page_size = request->FindFieldByName("page_size");
  auto const* page_token = request->FindFieldByName("page_token");
  auto const* next = response->FindFieldByName("next_page_token");
  bool const looks_like = page_size != nullptr || page_token != nullptr || next != nullptr;
  if (!looks_like) return listing;
  if (page_size == nullptr || page_size->is_repeated() || !is_integer(page_size)) {
    listing.why_not = "the request has no integer page_size";
  } else if (!is_single_string(page_token)) {
    listing.why_not = "the request has no string page_token";
  } else if (!is_single_string(next)) {
    listing.why_not = "the response has no string next_page_token";
  } else {
    for (int i = 0; i < response->field_count(); ++i) {
      auto const* f = response->field(i);
      if (f->is_repeated() && !f->is_map()) {
        listing.items = f;
        break;
      }
    }
    if (listing.items == nullptr) listing.why_not = "the response has no repeated field (maps do not count)";
  }
  return listing;
}

std::string idempotency_of(pb::MethodDescriptor const* m) {
  switch (m->options().idempotency_level()) {
    case pb::MethodOptions::NO_SIDE_EFFECTS:
      return "kNoSideEffects";
    case pb::MethodOptions::IDEMPOTENT:
      return "kIdempotent";
    default:
      return "kUnknown";
  }
}

// The field number of the request's AIP-155 `request_id` (a single
// string), 0 for none.
int request_id_of(pb::MethodDescriptor const* m) {
  auto const* f = m->input_type()->FindFieldByName("request_id");
  return is_single_string(f) ? f->number() : 0;
}

// A method's names in generated code.
struct Method {
  pb::MethodDescriptor const* desc = nullptr;
  Kind kind = Kind::kUnary;
  Listing listing;
  std::string member;  // its entry in the Methods table (the proto name, keyword-safe)
  std::string call;    // the client's method
  std::string pages;   // List methods: the pages range
  std::string async;   // the async form ("" = none: bidi)
  std::string pages_async;
  std::string request;   // ::pkg::Request
  std::string response;  // ::pkg::Response
};

// Comment lines from the proto's leading comments of `d`, as "///" lines.
template <typename Descriptor>
std::string doc_of(Descriptor const* d, std::string const& indent) {
  pb::SourceLocation location;
  if (!d->GetSourceLocation(&location) || location.leading_comments.empty()) return "";
  std::string out;
  std::string text = location.leading_comments;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line[0] == ' ') line.erase(0, 1);
    if (!line.empty() && line.back() == '\\') line += '.';  // a trailing backslash would splice the next line
    out += indent + "///" + (line.empty() ? "" : " " + line) + "\n";
    start = end + 1;
  }
  return out;
}

class Generator final : public pb::compiler::CodeGenerator {
 public:
  bool Generate(pb::FileDescriptor const* file, std::string const& parameter,
                pb::compiler::GeneratorContext* context, std::string* error) const override {
    if (!parameter.empty()) {
      *error = "protoc-gen-stubkit takes no parameters (got \"" + parameter + "\")";
      return false;
    }
    // The generated types of every service share the package's namespace.
    std::map<std::string, std::string> types;
    std::vector<std::vector<Method>> services;
    for (int s = 0; s < file->service_count(); ++s) {
      auto const* service = file->service(s);
      std::string const n = service->name();
      for (std::string const& type :
           {n + "Client", "Basic" + n + "Client", n + "Methods", n + "PoolStub", "Mock" + n + "Stub",
            "Mock" + n + "Client", "stubkit_registered_" + n}) {
        auto [it, fresh] = types.emplace(type, service->full_name());
        if (!fresh) {
          *error = "service " + service->full_name() + ": its generated type " + type +
                   " is also generated for service " + it->second + "; rename one of them";
          return false;
        }
      }
      std::vector<Method> methods;
      if (!plan(service, &methods, error)) return false;
      services.push_back(std::move(methods));
    }
    std::string const stem = file_stem(file->name());
    write(context, stem + ".stubkit.h", client_header(file, services));
    write(context, stem + ".stubkit_mock.h", mock_header(file, services));
    return true;
  }

  std::uint64_t GetSupportedFeatures() const override { return FEATURE_PROTO3_OPTIONAL; }

 private:
  static void write(pb::compiler::GeneratorContext* context, std::string const& name,
                    std::string const& text) {
    std::unique_ptr<pb::io::ZeroCopyOutputStream> out(context->Open(name));
    pb::io::Printer printer(out.get(), '$');
    printer.PrintRaw(text);
  }

  // Works out every method's names, refusing collisions.
  static bool plan(pb::ServiceDescriptor const* service, std::vector<Method>* methods, std::string* error) {
    auto const* file = service->file();
    std::string const where = "service " + service->full_name();  // protoc adds the file's name
    std::string const prefix = file->package().empty() ? "" : file->package() + ".";
    for (std::string const& type : {service->name() + "Client", "Basic" + service->name() + "Client",
                                    service->name() + "Methods", service->name() + "PoolStub",
                                    "Mock" + service->name() + "Stub", "Mock" + service->name() + "Client"}) {
      auto const* pool = file->pool();
      std::string const full = prefix + type;
      if (pool->FindMessageTypeByName(full) == nullptr && pool->FindEnumTypeByName(full) == nullptr &&
          pool->FindServiceByName(full) == nullptr && pool->FindEnumValueByName(full) == nullptr) {
        continue;
      }
      *error = where + ": the generated type " + type + " would collide with " + prefix + type +
               "; rename the service or that type";
      return false;
    }
    std::map<std::string, std::string> client_names{{"stub", "the client's own stub()"},
                                                    {"options", "the client's own options()"}};  // kept free
    std::map<std::string, std::string> table_names{{"kMethods", "the table's list of methods"}};
    auto claim = [&](std::map<std::string, std::string>& names, std::string const& name,
                     pb::MethodDescriptor const* m) {
      auto [it, fresh] = names.emplace(name, "method " + m->name() + "'s");
      if (fresh) return true;
      *error = where + ", method " + m->name() + ": its generated name " + name + " collides with " +
               it->second + "; rename one of them";
      return false;
    };
    for (int i = 0; i < service->method_count(); ++i) {
      auto const* m = service->method(i);
      Method method;
      method.desc = m;
      method.kind = kind_of(m);
      method.listing = listing_of(m);
      method.request = QualifiedClassName(m->input_type());
      method.response = QualifiedClassName(m->output_type());
      method.member = ResolveKeyword(m->name());
      if (method.member == service->name() + "Methods") method.member += '_';  // not the table's own name
      std::string const base = snake_case(m->name());
      method.call = client_name(base);
      if (method.listing.items != nullptr) method.pages = client_name(base + "_pages");
      if (method.kind != Kind::kBidi) method.async = client_name(base + "_async");
      if (method.listing.items != nullptr) method.pages_async = client_name(base + "_pages_async");
      if (!claim(table_names, method.member, m)) return false;
      for (std::string const* name : {&method.call, &method.pages, &method.async, &method.pages_async}) {
        if (!name->empty() && !claim(client_names, *name, m)) return false;
      }
      methods->push_back(std::move(method));
    }
    return true;
  }

  static std::string client_header(pb::FileDescriptor const* file,
                                   std::vector<std::vector<Method>> const& services) {
    std::string const stem = file_stem(file->name());
    std::string out;
    out += "// Generated by protoc-gen-stubkit from " + file->name() + ". Do not edit.\n";
    out += "// Typed stubkit clients of its services (stubkit/client.hpp; docs/codegen.md).\n";
    out += "#ifndef " + guard_of(stem + ".stubkit.h") + "\n#define " + guard_of(stem + ".stubkit.h") + "\n\n";
    if (services.empty()) {
      out += "// " + file->name() + " defines no service.\n\n#endif\n";
      return out;
    }
    out +=
        "#include <array>\n#include <cstddef>\n#include <functional>\n#include <memory>\n#include "
        "<utility>\n\n";
    out += "#include \"" + stem + ".grpc.pb.h\"\n#include \"stubkit/client.hpp\"\n\n";
    out += page_traits(services);
    std::string const ns = cpp_namespace(file->package());
    if (!ns.empty()) out += "namespace " + ns + " {\n\n";
    for (int s = 0; s < file->service_count(); ++s) out += service_code(file->service(s), services[s]);
    if (!ns.empty()) out += "}  // namespace " + ns + "\n\n";
    out += "#endif  // " + guard_of(stem + ".stubkit.h") + "\n";
    return out;
  }

  // PageTraits of each List response, once per program: two services may
  // list the same response type.
  static std::string page_traits(std::vector<std::vector<Method>> const& services) {
    std::string out;
    std::set<std::string> done;
    for (auto const& methods : services) {
      for (auto const& m : methods) {
        if (m.listing.items == nullptr || !done.insert(m.response).second) continue;
        std::string const guard = guard_of("PAGE_TRAITS_" + m.desc->output_type()->full_name());
        out += "#ifndef " + guard + "\n#define " + guard + "\n";
        out += "/// " + m.desc->output_type()->full_name() + " lists `" + m.listing.items->name() + "`.\n";
        out += "template <>\nstruct stubkit::PageTraits<" + m.response + "> {\n";
        out += "  static auto* items(" + m.response + "& response) { return response.mutable_" +
               pb::compiler::cpp::FieldName(m.listing.items) + "(); }\n};\n#endif\n\n";
      }
    }
    return out;
  }

  static std::string service_code(pb::ServiceDescriptor const* service, std::vector<Method> const& methods) {
    std::string const name = service->name();
    std::string const table = name + "Methods";
    std::string out;

    // The method table.
    out += "/// What stubkit knows of each " + service->full_name() +
           " method: full name, kind, idempotency_level\n/// and the field number of an AIP-155 `request_id` "
           "(0 = none). Retries and the retry\n/// interceptor look methods up here by full name.\n";
    out += "struct " + table + " {\n";
    for (auto const& m : methods) {
      out += "  static constexpr ::stubkit::MethodInfo " + m.member + "{\"/" + service->full_name() + "/" +
             m.desc->name() + "\", ::stubkit::RpcKind::" + kind_name(m.kind) +
             ", ::stubkit::Idempotency::" + idempotency_of(m.desc) + ", " +
             std::to_string(request_id_of(m.desc)) + "};\n";
    }
    out += "  static constexpr std::array<::stubkit::MethodInfo, " + std::to_string(methods.size()) +
           "> kMethods{{";
    for (std::size_t i = 0; i < methods.size(); ++i) out += (i ? ", " : "") + methods[i].member;
    out += "}};\n};\n";
    out += "inline bool const stubkit_registered_" + name + " = ::stubkit::register_methods(" + table +
           "::kMethods.data(), " + table + "::kMethods.size());\n\n";

    // The client.
    out += doc_of(service, "");
    out +=
        "/// A stubkit client of " + service->full_name() +
        ": every call with CallOptions (retries, deadline,\n/// metadata, observer), List methods as ranges, "
        "streams as ranges, writers and sessions.\n/// Thread-safe; copies share the stub. Use it as " +
        name +
        "Client: it is a template only\n/// so that each method's code is compiled where the method is "
        "called.\n";
    out += "template <typename StubInterface = " + name + "::StubInterface>\n";
    out += "class Basic" + name + "Client {\n public:\n";
    out += "  using Service = " + name + ";\n  using Stub = StubInterface;\n  using Methods = " + table +
           ";\n\n";
    out += "  /// Calls " + service->full_name() + " over `channel`.\n";
    out += "  explicit Basic" + name +
           "Client(std::shared_ptr<::grpc::ChannelInterface> const& channel, ::stubkit::ClientOptions "
           "options = {})\n"
           "      : stubkit_stub_(" +
           name + "::NewStub(channel)), stubkit_options_(std::move(options)) {}\n";
    out += "  /// Calls through any stub: a mock's (Mock" + name + "Stub), or one with interceptors.\n";
    out += "  explicit Basic" + name +
           "Client(std::shared_ptr<Stub> stub, ::stubkit::ClientOptions options = {})\n"
           "      : stubkit_stub_(::stubkit::detail::require_stub(std::move(stub))), "
           "stubkit_options_(std::move(options)) {}\n\n";
    for (auto const& m : methods) out += method_code(m);
    out += "  /// The stub every call goes through.\n  Stub& stub() const { return *stubkit_stub_; }\n";
    out +=
        "  /// The defaults of every call, listing and stream.\n"
        "  ::stubkit::ClientOptions const& options() const { return stubkit_options_; }\n\n";
    out +=
        " private:\n  std::shared_ptr<Stub> stubkit_stub_;\n  ::stubkit::ClientOptions "
        "stubkit_options_;\n};\n";
    out += "/// The " + service->full_name() + " client.\nusing " + name + "Client = Basic" + name +
           "Client<>;\n\n";
    out += pool_stub_code(service, methods);
    return out;
  }

  // XxxPoolStub: the service's StubInterface over several channels, each
  // call (blocking, completion-queue or callback) on the next one in turn.
  static std::string pool_stub_code(pb::ServiceDescriptor const* service,
                                    std::vector<Method> const& methods) {
    std::string const name = service->name();
    std::string const pool = name + "PoolStub";
    // Qualified: inside the class, an rpc named like its service would
    // hide the service's name.
    std::string const ns = cpp_namespace(service->file()->package());
    std::string const ring = "::stubkit::detail::StubRing<::" + (ns.empty() ? "" : ns + "::") + name + ">";
    std::string const ctx = "::grpc::ClientContext* context";
    std::string const cq = "::grpc::CompletionQueue* cq";
    std::string out;
    out += "/// " + service->full_name() +
           "'s StubInterface over several channels:\n"
           "/// every call, blocking, completion-queue or callback, goes to the next\n"
           "/// channel in turn. Pass it wherever a stub goes (" +
           name +
           "Client, paginate, streams, async calls), e.g.\n"
           "///   " +
           name + "Client client(std::make_shared<" + pool +
           ">(pool.channels()));\n"
           "/// with a stubkit::ChannelPool `pool` (docs/channels.md). Thread-safe.\n";
    out += "class " + pool + " final : public " + name + "::StubInterface {\n public:\n";
    out +=
        "  /// One stub per channel of `channels` (shared_ptrs to channels). Throws\n"
        "  /// std::invalid_argument when there are none or one is null.\n";
    out += "  template <typename Channels>\n  explicit " + pool +
           "(Channels const& channels) : stubkit_ring_(channels) {}\n";
    out += "  " + pool + "(" + pool + " const&) = delete;\n  " + pool + "& operator=(" + pool +
           " const&) = delete;\n\n";
    out +=
        "  /// How many channels the calls are spread over.\n"
        "  std::size_t size() const noexcept { return stubkit_ring_.size(); }\n\n";
    for (auto const& m : methods) {
      std::string const& req = m.request;
      std::string const& resp = m.response;
      std::string const n = m.desc->name();
      if (m.kind == Kind::kUnary) {
        out += "  ::grpc::Status " + n + "(" + ctx + ", " + req + " const& request, " + resp +
               "* response) override {\n    return stubkit_ring_.next()." + n +
               "(context, request, response);\n  }\n";
      }
    }
    // A service without methods has no callback API to spread.
    bool const callbacks = !methods.empty();
    if (callbacks) out += "  async_interface* async() override { return &stubkit_async_; }\n";
    out += "\n private:\n";
    // The callback API: each call on the next stub's async().
    if (callbacks) out += "  class StubkitAsync final : public async_interface {\n   public:\n";
    if (callbacks) {
      out += "    explicit StubkitAsync(" + ring + "& ring) : ring_(ring) {}\n";
    }
    for (auto const& m : methods) {
      std::string const& req = m.request;
      std::string const& resp = m.response;
      std::string const n = m.desc->name();
      std::string const call = "      ring_.next().async()->" + n;
      switch (m.kind) {
        case Kind::kUnary:
          out += "    void " + n + "(" + ctx + ", " + req + " const* request, " + resp +
                 "* response, std::function<void(::grpc::Status)> done) override {\n" + call +
                 "(context, request, response, std::move(done));\n    }\n";
          out += "    void " + n + "(" + ctx + ", " + req + " const* request, " + resp +
                 "* response, ::grpc::ClientUnaryReactor* reactor) override {\n" + call +
                 "(context, request, response, reactor);\n    }\n";
          break;
        case Kind::kServerStreaming:
          out += "    void " + n + "(" + ctx + ", " + req + " const* request, ::grpc::ClientReadReactor<" +
                 resp + ">* reactor) override {\n" + call + "(context, request, reactor);\n    }\n";
          break;
        case Kind::kClientStreaming:
          out += "    void " + n + "(" + ctx + ", " + resp + "* response, ::grpc::ClientWriteReactor<" + req +
                 ">* reactor) override {\n" + call + "(context, response, reactor);\n    }\n";
          break;
        case Kind::kBidi:
          out += "    void " + n + "(" + ctx + ", ::grpc::ClientBidiReactor<" + req + ", " + resp +
                 ">* reactor) override {\n" + call + "(context, reactor);\n    }\n";
          break;
      }
    }
    if (callbacks) out += "\n   private:\n    " + ring + "& ring_;\n  };\n\n";
    // The completion-queue API and the blocking streams: gRPC's public
    // methods of the next stub, released into the raw pointers asked for.
    for (auto const& m : methods) {
      std::string const& req = m.request;
      std::string const& resp = m.response;
      std::string const n = m.desc->name();
      std::string const next = "stubkit_ring_.next().";
      switch (m.kind) {
        case Kind::kUnary: {
          std::string const reader = "::grpc::ClientAsyncResponseReaderInterface<" + resp + ">*";
          for (std::string const prefix : {"Async", "PrepareAsync"}) {
            out += "  " + reader + " " + prefix + n + "Raw(" + ctx + ", " + req + " const& request, " + cq +
                   ") override {\n    return " + next + prefix + n +
                   "(context, request, cq).release();\n  }\n";
          }
          break;
        }
        case Kind::kServerStreaming:
          out += "  ::grpc::ClientReaderInterface<" + resp + ">* " + n + "Raw(" + ctx + ", " + req +
                 " const& request) override {\n    return " + next + n +
                 "(context, request).release();\n  }\n";
          out += "  ::grpc::ClientAsyncReaderInterface<" + resp + ">* Async" + n + "Raw(" + ctx + ", " + req +
                 " const& request, " + cq + ", void* tag) override {\n    return " + next + "Async" + n +
                 "(context, request, cq, tag).release();\n  }\n";
          out += "  ::grpc::ClientAsyncReaderInterface<" + resp + ">* PrepareAsync" + n + "Raw(" + ctx +
                 ", " + req + " const& request, " + cq + ") override {\n    return " + next + "PrepareAsync" +
                 n + "(context, request, cq).release();\n  }\n";
          break;
        case Kind::kClientStreaming:
          out += "  ::grpc::ClientWriterInterface<" + req + ">* " + n + "Raw(" + ctx + ", " + resp +
                 "* response) override {\n    return " + next + n + "(context, response).release();\n  }\n";
          out += "  ::grpc::ClientAsyncWriterInterface<" + req + ">* Async" + n + "Raw(" + ctx + ", " + resp +
                 "* response, " + cq + ", void* tag) override {\n    return " + next + "Async" + n +
                 "(context, response, cq, tag).release();\n  }\n";
          out += "  ::grpc::ClientAsyncWriterInterface<" + req + ">* PrepareAsync" + n + "Raw(" + ctx + ", " +
                 resp + "* response, " + cq + ") override {\n    return " + next + "PrepareAsync" + n +
                 "(context, response, cq).release();\n  }\n";
          break;
        case Kind::kBidi: {
          std::string const rw = req + ", " + resp;
          out += "  ::grpc::ClientReaderWriterInterface<" + rw + ">* " + n + "Raw(" + ctx +
                 ") override {\n    return " + next + n + "(context).release();\n  }\n";
          out += "  ::grpc::ClientAsyncReaderWriterInterface<" + rw + ">* Async" + n + "Raw(" + ctx + ", " +
                 cq + ", void* tag) override {\n    return " + next + "Async" + n +
                 "(context, cq, tag).release();\n  }\n";
          out += "  ::grpc::ClientAsyncReaderWriterInterface<" + rw + ">* PrepareAsync" + n + "Raw(" + ctx +
                 ", " + cq + ") override {\n    return " + next + "PrepareAsync" + n +
                 "(context, cq).release();\n  }\n";
          break;
        }
      }
    }
    out += "\n  " + ring + " stubkit_ring_;\n";
    if (callbacks) out += "  StubkitAsync stubkit_async_{stubkit_ring_};\n";
    out += "};\n\n";
    return out;
  }

  // The two overloads of every form: one with the client's defaults
  // (stubkit_options_.<defaults>), and one with the caller's `options` that
  // names the method (`info`) before returning `body`. `params` come before
  // the options ("" for none) and `args` pass them on.
  static std::string with_options(std::string const& returns, std::string const& name,
                                  std::string const& params, std::string const& args,
                                  std::string const& options_type, std::string const& defaults,
                                  std::string const& info, std::string const& body) {
    return "  " + returns + " " + name + "(" + params + ") const { return " + name + "(" + args +
           (args.empty() ? "" : ", ") + "stubkit_options_." + defaults + "); }\n" + "  " + returns + " " +
           name + "(" + params + (params.empty() ? "" : ", ") + "::stubkit::" + options_type +
           " options) const {\n" + "    options.method = " + info + ";\n    return " + body + ";\n  }\n";
  }

  static std::string method_code(Method const& m) {
    std::string const& req = m.request;
    std::string const& resp = m.response;
    std::string const info = "&Methods::" + m.member;
    std::string const rpc = m.desc->name();
    std::string out = doc_of(m.desc, "  ");
    std::string headline = "  /// " + rpc + ": " + kind_words(m.kind);
    switch (m.kind != Kind::kUnary ? pb::MethodOptions::IDEMPOTENCY_UNKNOWN
                                   : m.desc->options().idempotency_level()) {
      case pb::MethodOptions::NO_SIDE_EFFECTS:
        headline += ", no side effects (retried)";
        break;
      case pb::MethodOptions::IDEMPOTENT:
        headline += ", idempotent (retried)";
        break;
      default:
        headline +=
            m.kind == Kind::kUnary && request_id_of(m.desc) != 0 ? ", retried when request_id is set" : "";
        break;
    }
    out += headline + ".\n";
    switch (m.kind) {
      case Kind::kUnary:
        if (m.listing.items != nullptr) {
          std::string const item_doc = "`" + m.listing.items->name() + "`";
          out += "  /// Its " + item_doc + ", lazily, page by page (a range of Result<item>).\n";
          out += "  auto " + m.call + "(" + req + " request, ::stubkit::PaginateOptions options) const {\n";
          out += "    options.method = " + info + ";\n";
          out += "    return ::stubkit::paginate(std::shared_ptr<Stub>(stubkit_stub_), &Stub::" + rpc +
                 ", std::move(request), std::move(options));\n  }\n";
          out += "  auto " + m.call + "(" + req + " request = {}) const { return " + m.call +
                 "(std::move(request), stubkit_options_.paginate); }\n";
          out += "  /// Its pages (empty ones too; a page's next_page_token() resumes later).\n";
          out += "  auto " + m.pages + "(" + req + " request, ::stubkit::PaginateOptions options) const {\n";
          out += "    options.method = " + info + ";\n";
          out += "    return ::stubkit::paginate_pages(std::shared_ptr<Stub>(stubkit_stub_), &Stub::" + rpc +
                 ", std::move(request), std::move(options));\n  }\n";
          out += "  auto " + m.pages + "(" + req + " request = {}) const { return " + m.pages +
                 "(std::move(request), stubkit_options_.paginate); }\n";
          out += "  /// Its " + item_doc +
                 ", listed asynchronously (async_paginate); each page call\n"
                 "  /// with `call` (the client's call options by default). The client must\n"
                 "  /// outlive the listing's last page call.\n";
          out += "  auto " + m.async + "(" + req +
                 " request, ::stubkit::PaginateOptions options, ::stubkit::CallOptions call) const {\n";
          out += "    options.method = call.method = " + info + ";\n";
          out += "    return ::stubkit::async_paginate(*stubkit_stub_, &Stub::async_interface::" + rpc +
                 ", std::move(request), std::move(options), std::move(call));\n  }\n";
          out += "  auto " + m.async + "(" + req + " request = {}) const {\n    return " + m.async +
                 "(std::move(request), stubkit_options_.paginate, stubkit_options_.call);\n  }\n";
          out += "  /// Its pages, listed asynchronously.\n";
          out += "  auto " + m.pages_async + "(" + req +
                 " request, ::stubkit::PaginateOptions options, ::stubkit::CallOptions call) const {\n";
          out += "    options.method = call.method = " + info + ";\n";
          out += "    return ::stubkit::async_paginate_pages(*stubkit_stub_, &Stub::async_interface::" + rpc +
                 ", std::move(request), std::move(options), std::move(call));\n  }\n";
          out += "  auto " + m.pages_async + "(" + req + " request = {}) const {\n    return " +
                 m.pages_async +
                 "(std::move(request), stubkit_options_.paginate, stubkit_options_.call);\n  }\n\n";
          return out;
        }
        if (!m.listing.why_not.empty()) {
          out += "  /// Not paged as an AIP-158 List method: " + m.listing.why_not + ".\n";
        }
        out += with_options("::stubkit::Result<" + resp + ">", m.call, req + " const& request", "request",
                            "CallOptions", "call", info,
                            "::stubkit::call(*stubkit_stub_, &Stub::" + rpc + ", request, options)");
        out += "  /// " + rpc +
               " without blocking (async_call): `token` is a callback, stubkit::use_future,\n"
               "  /// stubkit::use_awaitable or an asio token. The client must outlive the call.\n";
        out += "  template <typename Token>\n  auto " + m.async + "(" + req +
               " request, Token&& token) const {\n";
        out += "    return " + m.async +
               "(std::move(request), stubkit_options_.call, std::forward<Token>(token));\n  }\n";
        out += "  template <typename Token>\n  auto " + m.async + "(" + req +
               " request, ::stubkit::CallOptions options, Token&& token) const {\n";
        out += "    options.method = " + info + ";\n";
        out += "    return ::stubkit::async_call(*stubkit_stub_, &Stub::async_interface::" + rpc +
               ", std::move(request), std::move(options),\n                               "
               "std::forward<Token>(token));\n  }\n\n";
        return out;
      case Kind::kServerStreaming:
        out += "  /// Its messages as a range of Result<message>.\n";
        out += with_options("::stubkit::StreamRange<" + resp + ">", m.call, req + " const& request",
                            "request", "StreamOptions", "stream", info,
                            "::stubkit::read_stream(*stubkit_stub_, &Stub::" + rpc + ", request, options)");
        out +=
            "  /// Its messages as an async stream (next() at a time). The client must\n"
            "  /// outlive the stream's call.\n";
        out += with_options("::stubkit::AsyncStream<" + resp + ">", m.async, req + " request",
                            "std::move(request)", "StreamOptions", "stream", info,
                            "::stubkit::async_read_stream(*stubkit_stub_, &Stub::async_interface::" + rpc +
                                ", std::move(request), options)") +
               "\n";
        return out;
      case Kind::kClientStreaming:
        out += "  /// A writer: write() each request, then finish() for the response.\n";
        out += with_options("::stubkit::StreamWriter<" + req + ", " + resp + ">", m.call, "", "",
                            "StreamOptions", "stream", info,
                            "::stubkit::write_stream(*stubkit_stub_, &Stub::" + rpc + ", options)");
        out += "  /// An async writer. The client must outlive the call.\n";
        out += with_options("::stubkit::AsyncWriter<" + req + ", " + resp + ">", m.async, "", "",
                            "StreamOptions", "stream", info,
                            "::stubkit::async_write_stream(*stubkit_stub_, &Stub::async_interface::" + rpc +
                                ", options)") +
               "\n";
        return out;
      case Kind::kBidi:
        out += "  /// A session: write and read concurrently, writes_done(), finish().\n";
        out += with_options("::stubkit::BidiSession<" + req + ", " + resp + ">", m.call, "", "",
                            "StreamOptions", "stream", info,
                            "::stubkit::open_session(*stubkit_stub_, &Stub::" + rpc + ", options)") +
               "\n";
        return out;
    }
    return out;
  }

  static std::string mock_header(pb::FileDescriptor const* file,
                                 std::vector<std::vector<Method>> const& services) {
    std::string const stem = file_stem(file->name());
    std::string const guard = guard_of(stem + ".stubkit_mock.h");
    std::string out;
    out += "// Generated by protoc-gen-stubkit from " + file->name() + ". Do not edit.\n";
    out +=
        "// trompeloeil mocks of its services' stubs (MockXxxStub), and the clients\n"
        "// over them (MockXxxClient): script the calls with REQUIRE_CALL.\n";
    out += "#ifndef " + guard + "\n#define " + guard + "\n\n";
    if (services.empty()) {
      out += "// " + file->name() + " defines no service.\n\n#endif\n";
      return out;
    }
    out += "#include <trompeloeil.hpp>\n\n#include <memory>\n\n#include \"" + stem + ".stubkit.h\"\n\n";
    std::string const ns = cpp_namespace(file->package());
    if (!ns.empty()) out += "namespace " + ns + " {\n\n";
    for (int s = 0; s < file->service_count(); ++s) {
      auto const* service = file->service(s);
      std::string const mock = "Mock" + service->name() + "Stub";
      out +=
          "/// A mock of " + service->full_name() +
          "'s StubInterface. Blocking unary calls are mocked\n/// by name (`GetUser`); streams through their "
          "*Raw methods (`WatchUsersRaw`); the\n/// completion-queue methods (Async*Raw, PrepareAsync*Raw) "
          "too. Calls nobody\n/// expects fail the test. async() is not mocked: it returns null, so async\n"
          "/// calls through this stub end with FAILED_PRECONDITION.\n";
      out += "class " + mock + " : public " + service->name() + "::StubInterface {\n public:\n";
      for (auto const& m : services[s]) {
        std::string const& req = m.request;
        std::string const& resp = m.response;
        std::string const n = m.desc->name();
        std::string const ctx = "::grpc::ClientContext*";
        std::string const cq = "::grpc::CompletionQueue*";
        switch (m.kind) {
          case Kind::kUnary:
            out += "  MAKE_MOCK3(" + n + ", ::grpc::Status(" + ctx + ", " + req + " const&, " + resp +
                   "*), override);\n";
            out += "  MAKE_MOCK3(Async" + n + "Raw, ::grpc::ClientAsyncResponseReaderInterface<" + resp +
                   ">*(" + ctx + ", " + req + " const&, " + cq + "), override);\n";
            out += "  MAKE_MOCK3(PrepareAsync" + n + "Raw, ::grpc::ClientAsyncResponseReaderInterface<" +
                   resp + ">*(" + ctx + ", " + req + " const&, " + cq + "), override);\n";
            break;
          case Kind::kServerStreaming:
            out += "  MAKE_MOCK2(" + n + "Raw, ::grpc::ClientReaderInterface<" + resp + ">*(" + ctx + ", " +
                   req + " const&), override);\n";
            out += "  MAKE_MOCK4(Async" + n + "Raw, ::grpc::ClientAsyncReaderInterface<" + resp + ">*(" +
                   ctx + ", " + req + " const&, " + cq + ", void*), override);\n";
            out += "  MAKE_MOCK3(PrepareAsync" + n + "Raw, ::grpc::ClientAsyncReaderInterface<" + resp +
                   ">*(" + ctx + ", " + req + " const&, " + cq + "), override);\n";
            break;
          case Kind::kClientStreaming:
            out += "  MAKE_MOCK2(" + n + "Raw, ::grpc::ClientWriterInterface<" + req + ">*(" + ctx + ", " +
                   resp + "*), override);\n";
            out += "  MAKE_MOCK4(Async" + n + "Raw, ::grpc::ClientAsyncWriterInterface<" + req + ">*(" + ctx +
                   ", " + resp + "*, " + cq + ", void*), override);\n";
            out += "  MAKE_MOCK3(PrepareAsync" + n + "Raw, ::grpc::ClientAsyncWriterInterface<" + req +
                   ">*(" + ctx + ", " + resp + "*, " + cq + "), override);\n";
            break;
          case Kind::kBidi: {
            // A type with a comma cannot pass through the macro: name it.
            std::string const rw = "StubkitReaderWriter_" + n;
            std::string const arw = "StubkitAsyncReaderWriter_" + n;
            out += "  using " + rw + " = ::grpc::ClientReaderWriterInterface<" + req + ", " + resp + ">;\n";
            out += "  using " + arw + " = ::grpc::ClientAsyncReaderWriterInterface<" + req + ", " + resp +
                   ">;\n";
            out += "  MAKE_MOCK1(" + n + "Raw, " + rw + "*(" + ctx + "), override);\n";
            out +=
                "  MAKE_MOCK3(Async" + n + "Raw, " + arw + "*(" + ctx + ", " + cq + ", void*), override);\n";
            out +=
                "  MAKE_MOCK2(PrepareAsync" + n + "Raw, " + arw + "*(" + ctx + ", " + cq + "), override);\n";
            break;
          }
        }
      }
      out += "};\n\n";
      std::string const client = service->name() + "Client";
      out += "/// " + client + " over a " + mock +
             ": pass it wherever the code under test\n"
             "/// takes the client (copies share the mock) and script the calls on mock().\n"
             "/// The client's own retries, pagination and streams run for real.\n";
      out += "class Mock" + client + " : public " + client + " {\n public:\n";
      out += "  explicit Mock" + client + "(::stubkit::ClientOptions options = {})\n      : " + client +
             "(std::make_shared<" + mock + ">(), std::move(options)) {}\n";
      out += "  /// The mock every call of this client goes to.\n";
      out += "  " + mock + "& mock() const { return static_cast<" + mock + "&>(stub()); }\n};\n\n";
    }
    if (!ns.empty()) out += "}  // namespace " + ns + "\n\n";
    out += "#endif  // " + guard + "\n";
    return out;
  }
};

}  // namespace

int main(int argc, char* argv[]) {
  Generator generator;
  return google::protobuf::compiler::PluginMain(argc, argv, &generator);
}
