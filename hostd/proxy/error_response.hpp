// The responses hostd itself writes when it cannot serve a request: the
// status, a one-line text reason, and the request id that is also in the log.
#pragma once

#include <string_view>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "hostd/refusal.hpp"

namespace vmgate::hostd {

boost::beast::http::response<boost::beast::http::string_body> make_error_response(
    const Refusal& refusal, std::string_view request_id, unsigned version, bool keep_alive);

}  // namespace vmgate::hostd
