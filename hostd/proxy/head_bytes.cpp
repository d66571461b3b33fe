#include "hostd/proxy/head_bytes.hpp"

#include <boost/beast/http/status.hpp>

namespace vmgate::hostd {
namespace {

void append_version(unsigned version, std::string& out) {
  const char digits[8] = {'H', 'T',
                          'T', 'P',
                          '/', static_cast<char>('0' + version / 10 % 10),
                          '.', static_cast<char>('0' + version % 10)};
  out.append(digits, sizeof digits);
}

// Room for the field lines and the empty line, so the head is one allocation.
void reserve_fields(const http::fields& fields, std::size_t start_line, std::string& out) {
  std::size_t n = out.size() + start_line + 2;
  for (const auto& field : fields)
    n += field.name_string().size() + 2 + field.value().size() + 2;
  out.reserve(n);
}

void append_fields(const http::fields& fields, std::string& out) {
  for (const auto& field : fields) {
    out += field.name_string();
    out += ": ";
    out += field.value();
    out += "\r\n";
  }
  out += "\r\n";
}

}  // namespace

void append_head(const http::request_header<>& head, std::string& out) {
  reserve_fields(head, head.method_string().size() + head.target().size() + 12, out);
  out += head.method_string();
  out += ' ';
  out += head.target();
  out += ' ';
  append_version(head.version(), out);
  out += "\r\n";
  append_fields(head, out);
}

void append_head(const http::response_header<>& head, std::string& out) {
  reserve_fields(head, head.reason().size() + 15, out);
  append_version(head.version(), out);
  const unsigned code = head.result_int();
  const char status[5] = {' ', static_cast<char>('0' + code / 100 % 10),
                          static_cast<char>('0' + code / 10 % 10),
                          static_cast<char>('0' + code % 10), ' '};
  out.append(status, sizeof status);
  // Beast keeps the agent's reason phrase, or none: then the standard one
  // for the code, as its serializer writes (RFC 9112 §4: it may be empty).
  out += head.reason();
  out += "\r\n";
  append_fields(head, out);
}

}  // namespace vmgate::hostd
