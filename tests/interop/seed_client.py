"""The reference document's Python client, unmodified, driven against a server.

Usage: seed_client.py TARGET  (with user_pb2/user_pb2_grpc on PYTHONPATH)

The class UserClient below is copied verbatim from the reference document
(section "Python gRPC Client"); only the imports it relies on and the driver
under __main__ are added. It creates users through the client's stub, gets one
that exists and one that does not, and lists all users.
"""
import sys

import grpc
import user_pb2, user_pb2_grpc


class UserClient:
    def __init__(self, target="localhost:50051", timeout=5.0):
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.lb_policy_name", "round_robin")])
        self.stub = user_pb2_grpc.UserServiceStub(self.channel)
        self.timeout = timeout

    def get_user(self, user_id):
        try:
            return self.stub.GetUser(
                user_pb2.GetUserRequest(id=user_id), timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def list_all_users(self):
        """Auto-paginate through all users."""
        users, token = [], ""
        while True:
            resp = self.stub.ListUsers(
                user_pb2.ListUsersRequest(page_size=100, page_token=token),
                timeout=self.timeout)
            users.extend(resp.users)
            if not resp.next_page_token:
                break
            token = resp.next_page_token
        return users


def main(target, count):
    client = UserClient(target)
    for i in range(count):
        user = user_pb2.User(id=f"py{i:04d}", email=f"py{i}@example.com",
                             display_name=f"Python user {i}",
                             role=user_pb2.USER_ROLE_MEMBER)
        user.metadata["source"] = "seed_client"
        client.stub.CreateUser(user_pb2.CreateUserRequest(user=user), timeout=5.0)
    found = client.get_user("py0000")
    assert found is not None and found.email == "py0@example.com", found
    assert client.get_user("no-such-user") is None
    users = client.list_all_users()
    ids = [u.id for u in users]
    assert len(ids) == len(set(ids)), "duplicate users in the listing"
    mine = [u for u in users if u.id.startswith("py")]
    assert len(mine) == count, (len(mine), count)
    print(f"seed client: created {count}, got py0000, missing is None, listed {len(users)} users")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 250)
