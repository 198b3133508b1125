// Connections (Supervisor::Impl, supervisor.hpp): in round_robin and least_connections modes
// busd accepts on the app's listeners into its bounded queue, and hands each connection to one
// ready worker as NewConn with the fd (policy.cpp's pick() chooses which). It keeps its copy
// until the worker acknowledges it (proc.cpp); requeue() takes back a dead worker's.
#include "cluster/supervisor.hpp"

#include "cluster/wire.hpp"
#include "transport/sockets.hpp"

#include <boost/asio/post.hpp>

#include <cerrno>
#include <cstring>

#include <sys/socket.h>

namespace bus::cluster {

using detail::send_control;

namespace {

// Whether busd accepts and dispatches (else the workers accept themselves).
bool busd_accepts(Mode mode) {
    return mode == Mode::round_robin || mode == Mode::least_connections;
}

} // namespace

void Supervisor::Impl::arm(App& a, Listener& l) {
    if (l.waiting || l.scheduled || a.state != AppState::running || !busd_accepts(a.config.mode))
        return;
    if (a.pending.size() >= a.config.max_pending)
        return; // resumed by dispatch(): connections wait in the kernel backlog meanwhile
    l.waiting = true;
    l.socket.async_wait(
        asio::posix::stream_descriptor::wait_read,
        [this, &a, &l, alive = std::weak_ptr<int>(alive)](boost::system::error_code ec) {
            if (ec || alive.expired() || a.state != AppState::running)
                return;
            l.waiting = false;
            accept_batch(a, l);
        });
}

// Accepts until the backlog is empty, 64 at a time so the loop keeps turning.
void Supervisor::Impl::accept_batch(App& a, Listener& l) {
    if (a.state != AppState::running)
        return;
    bool drained = false;
    for (int i = 0; i < 64 && a.pending.size() < a.config.max_pending; ++i) {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        const int fd = ::accept4(l.socket.native_handle(), reinterpret_cast<sockaddr*>(&ss), &len,
                                 SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log("app '" + a.config.name + "': accept on " + l.address + ": " +
                    std::strerror(errno));
            drained = errno == EAGAIN || errno == EWOULDBLOCK;
            if (!drained) {
                // EMFILE and the like: try again a little later, not in a busy loop.
                auto timer = std::make_shared<asio::steady_timer>(io, milliseconds(50));
                l.scheduled = true;
                timer->async_wait([this, &a, &l, timer, alive = std::weak_ptr<int>(alive)](
                                      boost::system::error_code ec) {
                    if (ec || alive.expired() || a.state != AppState::running)
                        return;
                    l.scheduled = false;
                    accept_batch(a, l);
                });
            }
            break;
        }
        Pending c;
        c.fd = UniqueFd(fd);
        c.peer = bus::detail::address_text(ss);
        c.local = l.address.substr(6);
        c.id = ++a.next_id;
        a.pending.push_back(std::move(c));
    }
    dispatch(a);
    if (l.scheduled)
        return;
    if (drained)
        arm(a, l);
    else if (a.pending.size() < a.config.max_pending)
        schedule_accept(a, l); // more may wait: no new edge will say so
}

void Supervisor::Impl::schedule_accept(App& a, Listener& l) {
    if (l.scheduled || l.waiting)
        return;
    l.scheduled = true;
    asio::post(io, [this, &a, &l, alive = std::weak_ptr<int>(alive)] {
        if (alive.expired() || a.state != AppState::running)
            return; // the listener is gone with the app's running state
        l.scheduled = false;
        accept_batch(a, l);
    });
}

void Supervisor::Impl::dispatch(App& a) {
    if (a.state != AppState::running)
        return;
    std::vector<Proc*> procs;
    std::vector<Candidate> candidates;
    for (auto& p : a.procs) {
        procs.push_back(p.get());
        candidates.push_back(
            {p->state == Proc::State::ready && !p->congested && !p->cut && !p->refusing,
             p->reported_load + p->sent_since_report});
    }
    const bool was_full = a.pending.size() >= a.config.max_pending;
    while (!a.pending.empty()) {
        const auto chosen = pick(a.config.mode, candidates, a.cursor);
        if (!chosen)
            break;
        Proc& p = *procs[*chosen];
        Pending c = std::move(a.pending.front());
        a.pending.pop_front();
        v1::NewConn msg;
        msg.set_id(c.id);
        msg.set_app(a.config.name);
        msg.set_peer_address(c.peer);
        msg.set_local_address(c.local);
        // Borrowed: the channel dups it only if it must wait; ours stays open until the ack.
        const int fd = c.fd.get();
        c.sent = Clock::now();
        const auto id = c.id;
        p.in_flight.emplace(id, std::move(c));
        ++p.sent_since_report;
        p.window_allowance += 4;
        ++candidates[*chosen].load;
        if (!send_control(*p.channel, msg, Fds{fd})) {
            p.congested = true;
            candidates[*chosen].ready = false;
        }
    }
    if (was_full && a.pending.size() < a.config.max_pending)
        for (auto& l : a.listeners)
            schedule_accept(a, *l);
}

// Gives back a dead worker's unacknowledged connections, oldest first, at the front.
void Supervisor::Impl::requeue(App& a, Proc& p) {
    for (auto it = p.in_flight.rbegin(); it != p.in_flight.rend(); ++it)
        a.pending.push_front(std::move(it->second));
    p.in_flight.clear();
}

} // namespace bus::cluster
