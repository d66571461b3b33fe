#include "hostd/dns/vm_zone.hpp"

#include "hostd/cluster/cluster_directory.hpp"

namespace vmgate::hostd {

HostAddresses published_addresses(const ClusterDirectory& directory) {
  return [&directory](std::string_view host) {
    std::vector<boost::asio::ip::address> addresses;
    auto record = directory.host_record(host);
    if (!record) return addresses;
    for (const std::string& text : record->client_addresses) {
      boost::system::error_code ec;
      auto address = boost::asio::ip::make_address(text, ec);
      if (!ec) addresses.push_back(address);  // checked as the record was read
    }
    return addresses;
  };
}

DnsZone vm_zone(const Directory& directory, const HostdConfig& config, std::string local_host,
                HostAddresses other_hosts) {
  std::vector<boost::asio::ip::address> local;
  for (const std::string& text : config.dns.addresses) {
    boost::system::error_code ec;
    auto address = boost::asio::ip::make_address(text, ec);
    if (!ec) local.push_back(address);  // validated at load
  }
  DnsZone zone;
  zone.suffix = config.routing.host_suffix;
  while (zone.suffix.starts_with('.'))
    zone.suffix.erase(0, 1);
  zone.ttl_seconds = config.dns.ttl_seconds;
  zone.lookup = [&directory, local = std::move(local), local_host = std::move(local_host),
                 other_hosts = std::move(other_hosts)](std::string_view name) {
    DnsName answer;
    const Lookup found = directory.find(name);
    if (found.status == LookupStatus::not_found) return answer;
    answer.exists = true;
    if (found.status != LookupStatus::found || !found.vm) return answer;
    if (found.vm->host == local_host || found.vm->host.empty())
      answer.addresses = local;
    else if (other_hosts)
      answer.addresses = other_hosts(found.vm->host);
    // A VM whose host publishes no address (a host older than the field, or
    // one with neither cluster.client_addresses nor dns.addresses) stays
    // NODATA: the name exists, so NXDOMAIN would be cached as "no such VM"
    // (RFC 2308 §5), and this host's own address would put a forwarding hop
    // on every connection while hiding the missing setting.
    return answer;
  };
  return zone;
}

}  // namespace vmgate::hostd
