#include "bus/broker_config.hpp"

#include "bus/endpoint.hpp"
#include "bus/subject.hpp"
#include "core/toml_reader.hpp"

#include <string>
#include <vector>

namespace bus::broker {
namespace {

using bus::detail::TomlReader;

template <class T>
void id_list(const TomlReader& r, const char* key, std::vector<T>& out) {
    if (const auto* items = r.array(key, "must be an array of ids"))
        for (const auto& item : *items) {
            if (!item.is_integer() || item.as_integer()->get() < 0 ||
                item.as_integer()->get() > 0xfffffffe)
                r.fail(key, "must be an array of ids (integers from 0)");
            out.push_back(static_cast<T>(item.as_integer()->get()));
        }
}

void patterns(const TomlReader& r, const char* key, std::vector<std::string>& out) {
    if (const auto* items = r.array(key, "must be an array of subject patterns"))
        for (const auto& item : *items) {
            if (!item.is_string() || !valid_pattern(item.as_string()->get()))
                r.fail(key, "must be an array of subject patterns (tokens, *, >)");
            out.push_back(item.as_string()->get());
        }
}

} // namespace

Options load_config(const std::string& path) {
    const toml::table root = bus::detail::parse_toml_file(path);
    const TomlReader r(path, root);
    // [[app]] tables are the cluster's (bus::cluster::load_apps), [http] busd's HTTP face's
    // (bus::daemon::load_config).
    r.only({"broker", "limits", "access", "app", "http", "bridge"});
    Options options;

    if (const auto broker = r.table("broker")) {
        broker->only({"endpoints", "heartbeat_ms"});
        const std::string not_strings = "must be an array of strings";
        if (const auto* items = broker->array("endpoints", not_strings))
            for (const auto& item : *items) {
                if (!item.is_string())
                    broker->fail("endpoints", not_strings);
                const std::string text = item.as_string()->get();
                auto endpoint = parse_endpoint(text);
                if (!endpoint || endpoint.value().scheme == Endpoint::Scheme::tcp)
                    broker->fail("endpoints", "'" + text + "' is not ipc://PATH or unix://PATH");
                options.endpoints.push_back(text);
            }
        broker->duration("heartbeat_ms", options.heartbeat, 50, 60000);
    }
    if (const auto limits = r.table("limits")) {
        limits->only({"max_message_size", "client_queue_messages", "client_queue_bytes",
                      "max_subscriptions", "max_services", "max_tracked_subjects"});
        auto& l = options.limits;
        limits->integer("max_message_size", l.max_message_size, 1024, 256 << 20);
        limits->integer("client_queue_messages", l.client_queue_messages, 1, 10000000);
        limits->integer("client_queue_bytes", l.client_queue_bytes, 4096, 1ll << 32);
        limits->integer("max_subscriptions", l.max_subscriptions, 1, 1000000);
        limits->integer("max_services", l.max_services, 1, 100000);
        limits->integer("max_tracked_subjects", l.max_tracked_subjects, 1, 1000000);
    }
    if (const auto access = r.table("access")) {
        access->only({"allow_uids", "allow_gids", "monitor_uids", "rules"});
        id_list(*access, "allow_uids", options.allowed_uids);
        id_list(*access, "allow_gids", options.allowed_gids);
        id_list(*access, "monitor_uids", options.monitor_uids);
        for (const auto& t : access->tables("rules")) {
            t.only({"uid", "gid", "publish", "subscribe"});
            AccessRule rule;
            std::int64_t id = -1;
            t.integer("uid", id, 0, 0xfffffffe);
            if (id >= 0)
                rule.uid = static_cast<uid_t>(id);
            id = -1;
            t.integer("gid", id, 0, 0xfffffffe);
            if (id >= 0)
                rule.gid = static_cast<gid_t>(id);
            if (!rule.uid && !rule.gid)
                t.fail("", "needs a uid or a gid");
            patterns(t, "publish", rule.publish);
            patterns(t, "subscribe", rule.subscribe);
            options.rules.push_back(std::move(rule));
        }
    }
    return options;
}

} // namespace bus::broker
