#include "http/metrics.hpp"

#include "cluster/proc_stats.hpp"

#include "bus/v1/cluster.pb.h"

#include <array>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

namespace bus::http {
namespace {

using Label = std::pair<std::string_view, std::string_view>;

// The text format: a family's HELP and TYPE once, then its samples.
class Exposition {
public:
    Exposition() { out_.reserve(64 * 1024); }

    void family(std::string_view name, std::string_view type, std::string_view help) {
        out_.append("# HELP ").append(name).append(" ").append(help).append("\n");
        out_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
    }

    template <class T>
    void sample(std::string_view name, std::initializer_list<Label> labels, T value) {
        sample(name, std::span<const Label>(labels.begin(), labels.size()), value);
    }

    template <class T>
    void sample(std::string_view name, std::span<const Label> labels, T value) {
        out_.append(name);
        if (labels.size()) {
            out_ += '{';
            bool first = true;
            for (const auto& [key, v] : labels) {
                if (!first)
                    out_ += ',';
                first = false;
                out_.append(key).append("=\"");
                escape(v);
                out_ += '"';
            }
            out_ += '}';
        }
        out_ += ' ';
        char buffer[32];
        const auto end = std::to_chars(buffer, buffer + sizeof buffer, value).ptr;
        out_.append(buffer, end);
        out_ += '\n';
    }

    std::string take() { return std::move(out_); }

private:
    void escape(std::string_view v) {
        for (char c : v) {
            if (c == '\\')
                out_ += "\\\\";
            else if (c == '"')
                out_ += "\\\"";
            else if (c == '\n')
                out_ += "\\n";
            else
                out_ += c;
        }
    }
    std::string out_;
};

// The answer, taken over (not copied: with a thousand subjects it is most of a scrape); empty
// if busd did not answer (its cluster is stopping).
// A family per field of a `$sys` record, and in each a series per record, named by
// `labels_of(record)` (an array of Labels).
template <class Record>
struct Field {
    const char* name;
    const char* type; // counter, gauge
    const char* help;
    std::uint64_t (Record::*get)() const;
};

template <class Record, class Records, class LabelsOf>
void per_record(Exposition& e, std::initializer_list<Field<Record>> fields, const Records& records,
                LabelsOf labels_of) {
    for (const auto& f : fields) {
        e.family(f.name, f.type, f.help);
        for (const Record& r : records)
            e.sample(f.name, std::span<const Label>(labels_of(r)), (r.*f.get)());
    }
}

template <class T>
std::unique_ptr<T> answer(broker::Broker& broker, const char* subject,
                          std::string_view payload = {}) {
    auto a = broker.query(subject, payload, ::getuid());
    if (auto* typed = dynamic_cast<T*>(a.reply.get())) {
        a.reply.release();
        return std::unique_ptr<T>(typed);
    }
    return std::make_unique<T>();
}

double seconds_since(std::int64_t unix_ns, std::int64_t now_ns) {
    return unix_ns > 0 && now_ns > unix_ns ? static_cast<double>(now_ns - unix_ns) * 1e-9 : 0.0;
}

void broker_metrics(Exposition& e, const v1::BrokerStats& stats, const v1::ClientList& clients) {
    e.family("bus_info", "gauge", "busd's version and id (always 1)");
    e.sample("bus_info", {{"version", stats.version()}, {"broker_id", stats.broker_id()}}, 1);
    e.family("bus_messages_routed_total", "counter",
             "Messages routed (publishes, requests, "
             "replies, direct messages)");
    e.sample("bus_messages_routed_total", {}, stats.msgs_routed());
    e.family("bus_dropped_total", "counter", "Deliveries dropped: a recipient's queue was full");
    e.sample("bus_dropped_total", {}, stats.dropped());

    e.family("bus_clients", "gauge", "Connected clients by transport");
    std::map<std::string, int> by_transport{{"unix", 0}, {"ipc", 0}, {"tcp", 0}};
    for (const auto& c : clients.clients())
        ++by_transport[c.transport()];
    for (const auto& [transport, n] : by_transport)
        e.sample("bus_clients", {{"transport", transport}}, n);

    using S = v1::SubjectStats;
    per_record<S>(e,
                  {{"bus_subject_messages_in_total", "counter", "Messages published on the subject",
                    &S::msgs_in},
                   {"bus_subject_bytes_in_total", "counter",
                    "Payload bytes published on the subject", &S::bytes_in},
                   {"bus_subject_messages_out_total", "counter",
                    "Messages delivered to the subject's subscribers", &S::msgs},
                   {"bus_subject_bytes_out_total", "counter",
                    "Payload bytes delivered to the subject's subscribers", &S::bytes},
                   {"bus_subject_dropped_total", "counter",
                    "Deliveries on the subject dropped for a slow subscriber", &S::dropped}},
                  stats.subjects(), [](const S& s) {
                      return std::array{Label{"subject", s.subject()}};
                  });
}

void client_metrics(Exposition& e, const v1::ClientList& clients) {
    using C = v1::ClientInfo;
    per_record<C>(
        e,
        {{"bus_client_messages_in_total", "counter", "Messages the client sent", &C::msgs_in},
         {"bus_client_messages_out_total", "counter", "Messages delivered to the client",
          &C::msgs_out},
         {"bus_client_bytes_in_total", "counter", "Payload bytes the client sent", &C::bytes_in},
         {"bus_client_bytes_out_total", "counter", "Payload bytes delivered to the client",
          &C::bytes_out},
         {"bus_client_queued_bytes", "gauge", "Bytes waiting in busd for the client to read",
          &C::queued}},
        clients.clients(), [](const C& c) {
            return std::array{Label{"client", c.id()}, Label{"name", c.name()},
                              Label{"transport", c.transport()}};
        });
    e.family("bus_client_subscriptions", "gauge", "The client's subscriptions");
    for (const auto& c : clients.clients())
        e.sample("bus_client_subscriptions",
                 {{"client", c.id()}, {"name", c.name()}, {"transport", c.transport()}},
                 c.subscriptions());
    e.family("bus_client_dropped_total", "counter",
             "Messages dropped for the client: its queue was full (queue_full), or its link "
             "broke after taking them (unsent)");
    for (const auto& c : clients.clients()) {
        e.sample("bus_client_dropped_total",
                 {{"client", c.id()}, {"name", c.name()}, {"reason", "queue_full"}},
                 c.dropped() - std::min(c.dropped(), c.dropped_unsent()));
        e.sample("bus_client_dropped_total",
                 {{"client", c.id()}, {"name", c.name()}, {"reason", "unsent"}},
                 c.dropped_unsent());
    }
}

void service_metrics(Exposition& e, const v1::BrokerStats& stats, const v1::ServiceList& services) {
    e.family("bus_service_instances", "gauge", "Clients serving the service now");
    for (const auto& s : services.services())
        e.sample("bus_service_instances", {{"service", s.name()}}, s.instances_size());

    e.family("bus_requests_total", "counter",
             "Requests to the service by outcome: ok and error (the instance's answer), "
             "no_responders, timeout (the requester's deadline passed first), service_lost, "
             "expired (dropped unsent: its deadline had passed)");
    for (const auto& s : stats.services()) {
        const std::pair<const char*, std::uint64_t> outcomes[] = {
            {"ok", s.ok()},
            {"error", s.errors()},
            {"no_responders", s.no_responders()},
            {"timeout", s.timeouts()},
            {"service_lost", s.service_lost()},
            {"expired", s.expired()}};
        for (const auto& [outcome, n] : outcomes)
            e.sample("bus_requests_total", {{"service", s.name()}, {"outcome", outcome}}, n);
    }

    e.family("bus_request_duration_seconds", "histogram",
             "From busd handing a request to an instance to busd reading its answer");
    for (const auto& s : stats.services()) {
        const auto& h = s.latency();
        std::uint64_t cumulative = 0;
        for (int i = 0; i < h.bounds_seconds_size() && i < h.counts_size(); ++i) {
            cumulative += h.counts(i);
            char le[32];
            const auto end = std::to_chars(le, le + sizeof le, h.bounds_seconds(i)).ptr;
            e.sample("bus_request_duration_seconds_bucket",
                     {{"service", s.name()}, {"le", std::string_view(le, end - le)}}, cumulative);
        }
        e.sample("bus_request_duration_seconds_bucket", {{"service", s.name()}, {"le", "+Inf"}},
                 h.count());
        e.sample("bus_request_duration_seconds_sum", {{"service", s.name()}}, h.sum_seconds());
        e.sample("bus_request_duration_seconds_count", {{"service", s.name()}}, h.count());
    }
}

void cluster_metrics(Exposition& e, const v1::ClusterList& cluster, std::int64_t now_ns) {
    e.family("bus_app_info", "gauge", "A cluster app, its state and dispatch mode (always 1)");
    for (const auto& a : cluster.apps())
        e.sample("bus_app_info", {{"app", a.name()}, {"state", a.state()}, {"mode", a.mode()}}, 1);
    e.family("bus_app_instances", "gauge", "Workers the app should run");
    for (const auto& a : cluster.apps())
        e.sample("bus_app_instances", {{"app", a.name()}}, a.instances());
    e.family("bus_app_restarts_total", "counter", "Workers of the app restarted after exiting");
    for (const auto& a : cluster.apps())
        e.sample("bus_app_restarts_total", {{"app", a.name()}}, a.restarts());
    e.family("bus_app_pending_connections", "gauge",
             "Accepted connections waiting for a ready worker");
    for (const auto& a : cluster.apps())
        e.sample("bus_app_pending_connections", {{"app", a.name()}}, a.pending());

    // pid in every worker's labels: during a reload an instance has two workers.
    auto each_worker = [&](const char* name, const char* type, const char* help, auto value) {
        e.family(name, type, help);
        for (const auto& a : cluster.apps())
            for (const auto& w : a.workers()) {
                const auto instance = std::to_string(w.instance());
                const auto pid = std::to_string(w.pid());
                e.sample(name, {{"app", a.name()}, {"instance", instance}, {"pid", pid}}, value(w));
            }
    };
    e.family("bus_worker_info", "gauge", "A worker and its state (always 1)");
    for (const auto& a : cluster.apps())
        for (const auto& w : a.workers()) {
            const auto instance = std::to_string(w.instance());
            const auto pid = std::to_string(w.pid());
            e.sample(
                "bus_worker_info",
                {{"app", a.name()}, {"instance", instance}, {"pid", pid}, {"state", w.state()}}, 1);
        }
    each_worker("bus_worker_resident_memory_bytes", "gauge", "The worker's resident memory",
                [](const v1::ClusterWorker& w) { return w.rss_bytes(); });
    each_worker("bus_worker_cpu_seconds_total", "counter", "The worker's user and system CPU time",
                [](const v1::ClusterWorker& w) { return static_cast<double>(w.cpu_ms()) / 1000; });
    each_worker(
        "bus_worker_uptime_seconds", "gauge", "Since the worker started",
        [&](const v1::ClusterWorker& w) { return seconds_since(w.started_unix_ns(), now_ns); });
    each_worker("bus_worker_heartbeat_lag_seconds", "gauge",
                "Since the worker last answered a heartbeat", [](const v1::ClusterWorker& w) {
                    return static_cast<double>(w.heartbeat_lag_ms()) / 1000;
                });
    each_worker("bus_worker_connections", "gauge", "Connections the worker holds",
                [](const v1::ClusterWorker& w) { return w.connections(); });
}

void queue_metrics(Exposition& e, const v1::QueueList& queues) {
    using Q = v1::QueueInfo;
    std::vector<std::reference_wrapper<const Q>> readable; // a queue busd could not read: none
    for (const auto& q : queues.queues())
        if (q.error().empty())
            readable.push_back(q);
    per_record<Q>(e,
                  {{"bus_shm_queue_capacity_bytes", "gauge", "The queue's ring size", &Q::capacity},
                   {"bus_shm_queue_depth_bytes", "gauge", "Bytes in the queue, not read yet",
                    &Q::depth_bytes},
                   {"bus_shm_queue_depth_records", "gauge", "Records in the queue, not read yet",
                    &Q::depth_records},
                   {"bus_shm_queue_produced_total", "counter", "Records written", &Q::produced},
                   {"bus_shm_queue_consumed_total", "counter", "Records read", &Q::consumed},
                   {"bus_shm_queue_skipped_total", "counter",
                    "Records skipped: a producer died before committing them", &Q::skipped}},
                  readable, [](const Q& q) {
                      return std::array{Label{"queue", q.name()}, Label{"client", q.client_id()}};
                  });
}

// busd's bridges ([[bridge.nats]]): a series per bridge, named by the bridge.
void bridge_metrics(Exposition& e, const v1::BrokerStats& stats) {
    using B = v1::BridgeInfo;
    e.family("bus_bridge_info", "gauge", "A bridge, its kind, state and server (always 1)");
    for (const auto& b : stats.bridges())
        e.sample("bus_bridge_info",
                 {{"bridge", b.name()},
                  {"kind", b.kind()},
                  {"state", b.state()},
                  {"server", b.server()}},
                 1);
    per_record<B>(
        e,
        {{"bus_bridge_messages_in_total", "counter", "Messages from the bridge, delivered here",
          &B::msgs_in},
         {"bus_bridge_messages_out_total", "counter", "Messages handed to the bridge",
          &B::msgs_out},
         {"bus_bridge_bytes_in_total", "counter", "Payload bytes from the bridge", &B::bytes_in},
         {"bus_bridge_bytes_out_total", "counter", "Payload bytes handed to the bridge",
          &B::bytes_out},
         {"bus_bridge_buffered_bytes", "gauge", "Bytes held while no server is connected",
          &B::buffered},
         {"bus_bridge_dropped_total", "counter",
          "Messages the bridge could not carry (buffer full, no server)", &B::dropped},
         {"bus_bridge_requests_in_total", "counter", "Requests from the bridge served here",
          &B::requests_in},
         {"bus_bridge_requests_out_total", "counter", "Local requests sent through the bridge",
          &B::requests_out},
         {"bus_bridge_reconnects_total", "counter", "Times the bridge reconnected",
          &B::reconnects}},
        stats.bridges(), [](const B& b) {
            return std::array{Label{"bridge", b.name()}};
        });
}

void process_metrics(Exposition& e, const v1::BrokerStats& stats) {
    const pid_t self = ::getpid();
    e.family("process_cpu_seconds_total", "counter", "busd's user and system CPU time");
    e.sample("process_cpu_seconds_total", {},
             static_cast<double>(cluster::detail::cpu_ms(self)) / 1000);
    e.family("process_resident_memory_bytes", "gauge", "busd's resident memory");
    e.sample("process_resident_memory_bytes", {}, cluster::detail::rss_bytes(self));
    std::error_code ec;
    std::size_t fds = 0;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
        ++fds;
    e.family("process_open_fds", "gauge", "busd's open file descriptors");
    e.sample("process_open_fds", {}, fds);
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        e.family("process_max_fds", "gauge", "busd's limit of open file descriptors");
        e.sample("process_max_fds", {}, static_cast<std::uint64_t>(limit.rlim_cur));
    }
    e.family("process_start_time_seconds", "gauge", "When busd started, since the epoch");
    e.sample("process_start_time_seconds", {}, static_cast<double>(stats.started_unix_ns()) * 1e-9);
}

} // namespace

std::string render_metrics(broker::Broker& broker, const Server& server) {
    const auto now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    const auto stats = answer<v1::BrokerStats>(broker, "$sys.stats");
    const auto clients = answer<v1::ClientList>(broker, "$sys.clients");
    Exposition e;
    broker_metrics(e, *stats, *clients);
    client_metrics(e, *clients);
    service_metrics(e, *stats, *answer<v1::ServiceList>(broker, "$sys.services"));
    cluster_metrics(e, *answer<v1::ClusterList>(broker, "$sys.cluster.ls"), now_ns);
    queue_metrics(e, *answer<v1::QueueList>(broker, "$sys.queues"));
    bridge_metrics(e, *stats);
    e.family("bus_http_connections", "gauge", "Open connections to busd's HTTP face");
    e.sample("bus_http_connections", {}, server.connections());
    e.family("bus_http_refused_connections_total", "counter",
             "Connections refused: the HTTP face had max_connections open");
    e.sample("bus_http_refused_connections_total", {}, server.refused_connections());
    process_metrics(e, *stats);
    return e.take();
}

} // namespace bus::http
