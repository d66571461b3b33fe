// fold_names: VM names folded as ClusterShell folds node sets.
#include "tools/vmgatectl/name_ranges.hpp"

#include <doctest/doctest.h>

#include <fmt/format.h>

using vmgate::ctl::fold_names;

TEST_CASE("consecutive numbered names fold into spans, zero padding kept") {
  std::vector<std::string> names;
  for (int i = 1; i <= 17; ++i)
    names.push_back(fmt::format("web{:02}", i));
  names.push_back("web19");
  CHECK(fold_names(names) == "web[01-17,19]");
}

TEST_CASE("names fold in number order, whatever order they came in") {
  CHECK(fold_names({"db3", "db1", "db2", "db10"}) == "db[1-3,10]");
  CHECK(fold_names({"web10", "web09", "web08"}) == "web[08-10]");
}

TEST_CASE("a lone name, names without numbers and prefixes of their own stay apart") {
  CHECK(fold_names({"web01"}) == "web01");
  CHECK(fold_names({"mail", "web1", "web2", "db1"}) == "db1,mail,web[1-2]");
  CHECK(fold_names({}) == "");
}

TEST_CASE("padding is part of a name: web1 and web01 are not one span") {
  CHECK(fold_names({"web1", "web01", "web02"}) == "web1,web[01-02]");
}

TEST_CASE("the same name twice is named once") {
  CHECK(fold_names({"a1", "a1", "a2"}) == "a[1-2]");
}
