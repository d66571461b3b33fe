#include <doctest/doctest.h>

#include "common/log.hpp"

using vmgate::log::escape_value;

TEST_CASE("log values a client controls cannot forge fields or lines") {
  CHECK(escape_value("vm1") == "vm1");
  CHECK(escape_value("") == "\"\"");
  CHECK(escape_value("a b") == "\"a b\"");
  CHECK(escape_value("x status=200") == "\"x status=200\"");
  CHECK(escape_value("line\nnext") == "\"line\\x0anext\"");
  CHECK(escape_value("q\"uote") == "\"q\\\"uote\"");
}
