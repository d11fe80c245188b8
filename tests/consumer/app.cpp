// A user's program built against stubkit as a meson subproject.
#include <iostream>

#include "stubkit/stubkit.hpp"
#include "stubkit/testing/embedded_server.hpp"
#include "stubkit/user_client.hpp"

int main() {
  stubkit::testing::EmbeddedServer server;
  server.service().preload(3);
  stubkit::UserClient client(server.channel());
  auto users = client.list_all_users();
  auto missing = client.get_user("nobody");
  bool const ok = users.ok() && users->size() == 3 && missing.ok() && !missing->has_value();
  std::cout << (ok ? "consumer: ok\n" : "consumer: FAILED\n");
  return ok ? 0 : 1;
}
