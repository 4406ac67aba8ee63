// Whether an HTTP client is still there. cpp-httplib 0.11 (Debian bookworm) does not give a
// handler its connection's socket, so it is found among the process's open sockets by the
// request's local and remote address and port (unique while the connection is open); a peer that
// closed its end shows as POLLRDHUP / POLLHUP. pq-server polls this while a request waits or
// streams, so that a client that goes away frees its slot at once.
// The search reads (fstat, getsockname, getpeername) descriptors that other connection threads
// may be closing at that moment: harmless (a reused descriptor cannot carry this connection's
// address pair while this connection is open), though ThreadSanitizer reports it as a race on
// the descriptor. One search per request: O(open descriptors) system calls.
#pragma once

#include <string>

namespace pqvk::server {

// The socket's descriptor, or -1 when none matches.
int find_client_socket(const std::string& local_addr, int local_port, const std::string& remote_addr, int remote_port);
// True when the peer has closed the connection (or it failed); never blocks. fd -1: false.
bool peer_closed(int fd);

}  // namespace pqvk::server
