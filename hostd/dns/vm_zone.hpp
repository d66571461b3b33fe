// The zone hostd answers (dns_answer.hpp): a VM's name or UUID under
// routing.host_suffix, from the directory, answered with the addresses of
// the host that runs the VM.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/address.hpp>

#include "hostd/config/hostd_config.hpp"
#include "hostd/directory/directory.hpp"
#include "hostd/dns/dns_answer.hpp"

namespace vmgate::hostd {

// Another host's addresses, by its name in the directory (a VmRecord's
// `host`); none known → the name exists but has no record (NODATA).
using HostAddresses = std::function<std::vector<boost::asio::ip::address>(std::string_view host)>;

class ClusterDirectory;

// In a cluster: another host's addresses as its host record publishes them
// (cluster.client_addresses). The directory must outlive the function.
HostAddresses published_addresses(const ClusterDirectory& directory);

// This host's VMs answer `config.dns.addresses`. The directory must outlive
// the zone. An ambiguous name exists but answers no record: the client
// learns nothing it could connect to the wrong VM with.
DnsZone vm_zone(const Directory& directory, const HostdConfig& config, std::string local_host,
                HostAddresses other_hosts = {});

}  // namespace vmgate::hostd
