// A guest's JOIN and LEAVE (hostd/guestside/guest_membership): the answer
// for each outcome of the membership store, a token for each kind of
// refusal and the store's words as the reason.
#include "hostd/guestside/guest_membership.hpp"

#include <doctest/doctest.h>

#include <filesystem>

#include "common/preamble.hpp"

using namespace vmgate;
using namespace vmgate::hostd;

namespace {

struct Store {
  std::filesystem::path dir;
  std::unique_ptr<GroupMembership> store;

  Store() {
    char name[] = "/tmp/vmgate-guest-membership.XXXXXX";
    dir = ::mkdtemp(name);
    auto opened =
        GroupMembership::open((dir / "state.json").string(),
                              {JoinableGroup{"web", {"web*"}}, JoinableGroup{"db", {"db1"}}});
    REQUIRE(opened.has_value());
    store = std::move(*opened);
  }
  ~Store() { std::filesystem::remove_all(dir); }
};

VmRecord vm(std::string name, std::string uuid) {
  VmRecord r;
  r.name = std::move(name);
  r.uuid = std::move(uuid);
  return r;
}

const VmRecord web1 = vm("web1", "aaaaaaaa-0000-0000-0000-000000000001");

}  // namespace

TEST_CASE("a guest joins a joinable group it may join, once, and leaves it") {
  Store s;
  auto joined = change_membership(*s.store, web1, preamble::Verb::join, "web");
  CHECK(joined.ok());
  CHECK(joined.reason.empty());
  REQUIRE(s.store->joins().size() == 1);
  CHECK(s.store->joins()[0].group == "web");

  auto again = change_membership(*s.store, web1, preamble::Verb::join, "web");
  CHECK(again.ok());
  CHECK(again.reason == "vm web1 was a member of web already");

  CHECK(change_membership(*s.store, web1, preamble::Verb::leave, "web").ok());
  CHECK(s.store->joins().empty());
  CHECK(change_membership(*s.store, web1, preamble::Verb::leave, "web").reason ==
        "vm web1 was not a member of web");
}

TEST_CASE("a JOIN the store refuses is answered with its kind and its reason") {
  Store s;
  auto not_joinable = change_membership(*s.store, web1, preamble::Verb::join, "ops");
  CHECK(not_joinable.status == 403);
  CHECK(not_joinable.token == "not-joinable");
  CHECK(not_joinable.reason.find("group 'ops' is not joinable") != std::string::npos);

  auto not_allowed = change_membership(*s.store, web1, preamble::Verb::join, "db");
  CHECK(not_allowed.status == 403);
  CHECK(not_allowed.token == "not-allowed");
  CHECK(not_allowed.reason.find("vm web1 may not join group 'db'") != std::string::npos);

  auto bad = change_membership(*s.store, web1, preamble::Verb::join, "a b");
  CHECK(bad.status == 400);
  CHECK(bad.token == "bad-group");
  CHECK(s.store->joins().empty());
}
