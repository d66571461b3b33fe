#include <doctest/doctest.h>

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "common/config_reader.hpp"
#include "hostd/identity/token_secret.hpp"
#include "hostd/identity/token_store.hpp"
#include "tests/support/skip.hpp"

using vmgate::config::ConfigError;
using vmgate::hostd::new_token;
using vmgate::hostd::token_hash;
using vmgate::hostd::TokenStore;

namespace {

const std::string abc_hash =
    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

std::string error_of(const std::string& text) {
  try {
    TokenStore::parse(text, "tokens");
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL_CHECK("tokens file parsed but should not have: " << text);
  return {};
}

std::string load_error(const std::string& path) {
  try {
    TokenStore::load(path);
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL_CHECK("tokens file loaded but should not have: " << path);
  return {};
}

// A directory of its own per test, removed at the end.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "vmgate-tokens-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path); }

  std::string write(const std::string& name, const std::string& text, mode_t mode) const {
    const auto file = (path / name).string();
    std::ofstream(file) << text;
    REQUIRE(::chmod(file.c_str(), mode) == 0);
    return file;
  }
};

}  // namespace

TEST_CASE("a token's hash is sha256: and the lowercase hex SHA-256 of the token") {
  CHECK(token_hash("abc") == abc_hash);
  CHECK(token_hash("") ==
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_CASE("a new token is 64 lowercase hex digits, different each time") {
  const std::string a = new_token();
  const std::string b = new_token();
  CHECK(a.size() == 64);
  CHECK(a.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(a != b);
}

TEST_CASE("a token from the tokens file verifies by name and is found by its secret") {
  const std::string secret = new_token();
  const auto store = TokenStore::parse(
      "# deploy tokens\n"
      "\n"
      "ansible  " +
          token_hash(secret) +
          "   # the CI runner\n"
          "\tlegacy.box-1\t" +
          abc_hash + "\r\n",
      "tokens");
  CHECK(store.size() == 2);
  CHECK(store.verify("ansible", secret));
  CHECK(store.verify("legacy.box-1", "abc"));
  CHECK(store.name_of(secret) == "ansible");
  CHECK(store.name_of("abc") == "legacy.box-1");
}

TEST_CASE("a wrong secret, an unknown name or an empty store verify nothing") {
  const auto store = TokenStore::parse("ansible " + abc_hash + "\n", "tokens");
  CHECK_FALSE(store.verify("ansible", "abd"));
  CHECK_FALSE(store.verify("ansible", ""));
  CHECK_FALSE(store.verify("Ansible", "abc"));
  CHECK_FALSE(store.verify("nobody", "abc"));
  CHECK_FALSE(store.name_of("abd").has_value());
  CHECK_FALSE(store.name_of(abc_hash).has_value());  // the hash is not the secret

  const TokenStore empty;
  CHECK(empty.size() == 0);
  CHECK_FALSE(empty.verify("", ""));
  CHECK_FALSE(empty.name_of("").has_value());
  CHECK(TokenStore::parse("# nothing yet\n\n", "tokens").size() == 0);
}

TEST_CASE("a wrong line in the tokens file is refused with its file and line") {
  const std::string other = token_hash("other");
  struct Case {
    std::string text;
    std::string expected;
  } cases[] = {
      {"a " + abc_hash + "\nb\n", "tokens:2: expected NAME sha256:HEX"},
      {"a " + abc_hash + " extra\n", "tokens:1: expected NAME sha256:HEX"},
      {"\n\nbad/name " + abc_hash + "\n", "tokens:3: token name 'bad/name' is not 1 to 64"},
      {fmt::format("{} {}", std::string(65, 'n'), abc_hash), "tokens:1: token name '"},
      {"a md5:900150983cd24fb0d6963f7d28e17f72\n", "tokens:1: token 'a': the hash is not sha256:"},
      {"a sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD\n",
       "tokens:1: token 'a': the hash is not sha256:"},
      {"a " + abc_hash.substr(0, abc_hash.size() - 1) + "\n", "tokens:1: token 'a': the hash"},
      {"a " + abc_hash + "0\n", "tokens:1: token 'a': the hash"},
      {"a abc\n", "tokens:1: token 'a': the hash"},
      {"a " + abc_hash + "\n# b\nb " + other + "\na " + other + "\n",
       "tokens:4: token 'a' is already defined on line 1"},
      {"a " + abc_hash + "\nb " + abc_hash + "\n",
       "tokens:2: token 'b' has the same secret as 'a' on line 1"},
  };
  for (const auto& c : cases) {
    const std::string message = error_of(c.text);
    CHECK_MESSAGE(message.starts_with(c.expected), message);
  }
  CHECK(TokenStore::parse(fmt::format("{} {}", std::string(64, 'n'), abc_hash), "tokens").size() ==
        1);
}

TEST_CASE("a tokens file only its owner can read and write is loaded") {
  TempDir dir;
  const auto file = dir.write("tokens", "ansible " + abc_hash + "\n", 0600);
  const auto store = TokenStore::load(file);
  CHECK(store.size() == 1);
  CHECK(store.verify("ansible", "abc"));
  CHECK(TokenStore::load(dir.write("read-only", "ansible " + abc_hash + "\n", 0400)).size() == 1);
}

TEST_CASE("a tokens file readable or writable by others is refused at start") {
  TempDir dir;
  for (mode_t mode : {0644, 0640, 0604, 0620, 0602, 0610}) {
    const auto file = dir.write("tokens", "ansible " + abc_hash + "\n", mode);
    const std::string message = load_error(file);
    CHECK_MESSAGE(message.starts_with(file + ": "), message);
    CHECK_MESSAGE(message.find("chmod 600 " + file) != std::string::npos, message);
  }
}

TEST_CASE("a tokens file that is missing or not a regular file is refused") {
  TempDir dir;
  const auto missing = (dir.path / "missing").string();
  CHECK(load_error(missing).starts_with(missing + ": cannot read tokens file"));
  REQUIRE(::chmod(dir.path.c_str(), 0700) == 0);
  CHECK(load_error(dir.path.string()) ==
        dir.path.string() + ": the tokens file is not a regular file");
  const auto fifo = (dir.path / "fifo").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK(load_error(fifo) == fifo + ": the tokens file is not a regular file");
}

TEST_CASE("a tokens file owned by another user is refused at start") {
  if (::geteuid() != 0) {
    vmgate::test::skip("changing a file's owner needs root");
    return;
  }
  const passwd* nobody = ::getpwnam("nobody");
  REQUIRE(nobody != nullptr);
  TempDir dir;
  const auto file = dir.write("tokens", "ansible " + abc_hash + "\n", 0600);
  REQUIRE(::chown(file.c_str(), nobody->pw_uid, nobody->pw_gid) == 0);
  const std::string message = load_error(file);
  CHECK_MESSAGE(message.starts_with(file + ": the tokens file is owned by nobody"), message);
  CHECK_MESSAGE(message.ends_with("chown root " + file), message);
}

TEST_CASE("a wrong line in a tokens file on disk names the file's path") {
  TempDir dir;
  const auto file = dir.write("tokens", "\nansible sha256:nope\n", 0600);
  CHECK(load_error(file).starts_with(file + ":2: token 'ansible'"));
}
