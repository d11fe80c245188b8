// A consumer's own service, generated with stubkit's meson helper: its
// typed client against an in-process server, and its mock driving the
// client's retries.
#include <grpcpp/grpcpp.h>

#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "inventory/v1/inventory.stubkit.h"
#include "inventory/v1/inventory.stubkit_mock.h"

namespace {

class Inventory final : public inventory::v1::InventoryService::Service {
 public:
  Inventory() {
    for (char c = 'a'; c <= 'e'; ++c) items_[std::string(1, c)] = 10;
  }
  grpc::Status GetItem(grpc::ServerContext*, inventory::v1::GetItemRequest const* request,
                       inventory::v1::Item* item) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = items_.find(request->sku());
    if (it == items_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, request->sku());
    item->set_sku(it->first);
    item->set_count(it->second);
    return grpc::Status::OK;
  }
  grpc::Status ListItems(grpc::ServerContext*, inventory::v1::ListItemsRequest const* request,
                         inventory::v1::ListItemsResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = items_.upper_bound(request->page_token());
    for (int n = 0; it != items_.end() && n < request->page_size(); ++it, ++n) {
      auto* item = response->add_items();
      item->set_sku(it->first);
      item->set_count(it->second);
    }
    if (it != items_.end()) response->set_next_page_token(response->items().rbegin()->sku());
    return grpc::Status::OK;
  }
  grpc::Status Reserve(grpc::ServerContext*, inventory::v1::ReserveRequest const* request,
                       inventory::v1::Item* item) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = items_.find(request->sku());
    if (it == items_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, request->sku());
    item->set_sku(it->first);
    item->set_count(--it->second);
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  std::map<std::string, int> items_;
};

}  // namespace

int main() {
  Inventory service;
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();

  stubkit::ClientOptions defaults;
  defaults.paginate.page_size = 2;
  inventory::v1::InventoryServiceClient client(server->InProcessChannel({}), defaults);
  int listed = 0;
  for (auto& item : client.list_items()) listed += item.ok() ? 1 : 0;
  inventory::v1::GetItemRequest get;
  get.set_sku("c");
  auto c = client.get_item(get);

  // The mock: Reserve with a request_id is retried through UNAVAILABLE.
  stubkit::ClientOptions retrying;
  retrying.call.retry = stubkit::RetryPolicy::standard();
  retrying.call.clock.sleep = [](std::chrono::milliseconds) {};
  inventory::v1::MockInventoryServiceClient mocked(retrying);
  int attempts = 0;
  ALLOW_CALL(mocked.mock(), Reserve(trompeloeil::_, trompeloeil::_, trompeloeil::_))
      .LR_SIDE_EFFECT(++attempts)
      .LR_RETURN(attempts < 3 ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "busy") : grpc::Status::OK);
  inventory::v1::ReserveRequest reserve;
  reserve.set_sku("a");
  reserve.set_request_id("r-1");
  bool const reserved = mocked.reserve(reserve).ok();

  bool const ok = listed == 5 && c.ok() && c->count() == 10 && reserved && attempts == 3;
  std::cout << "inventory: listed " << listed << ", reserve after " << attempts
            << " attempts: " << (ok ? "ok" : "FAILED") << "\n";
  server->Shutdown();
  return ok ? 0 : 1;
}
