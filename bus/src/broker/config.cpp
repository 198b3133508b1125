#include "bus/broker_config.hpp"

#include "bus/endpoint.hpp"
#include "bus/subject.hpp"

#include <toml++/toml.h>

#include <set>

namespace bus::broker {
namespace {

class Reader {
public:
    Reader(std::string path, toml::table& root) : path_(std::move(path)), root_(root) {}

    [[noreturn]] void fail(const std::string& key, const std::string& what) const {
        throw ConfigError(path_ + ": key '" + key + "': " + what);
    }

    // Every key in `table` must be one of `known`.
    void only(const toml::table& table, const std::string& prefix,
              std::initializer_list<std::string_view> known) const {
        for (const auto& [key, value] : table) {
            const std::string name =
                prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
            if (std::find(known.begin(), known.end(), key.str()) == known.end())
                fail(name, "unknown key");
        }
    }

    const toml::table* section(const std::string& name) const {
        const auto* node = root_.get(name);
        if (!node)
            return nullptr;
        if (!node->is_table())
            fail(name, "must be a table");
        return node->as_table();
    }

    // The value of `section.key`, or null when the key (or the section) is absent.
    static const toml::node* find(const toml::table* t, const char* key) {
        return t ? t->get(key) : nullptr;
    }

    template <class T>
    void integer(const toml::table* t, const std::string& section, const char* key, T& out,
                 std::int64_t min, std::int64_t max) const {
        const auto* node = find(t, key);
        if (!node)
            return;
        const std::string name = section + "." + key;
        if (!node->is_integer())
            fail(name, "must be an integer");
        const auto v = node->as_integer()->get();
        if (v < min || v > max)
            fail(name, "must be between " + std::to_string(min) + " and " + std::to_string(max));
        out = static_cast<T>(v);
    }

    template <class T>
    void id_list(const toml::table* t, const std::string& section, const char* key,
                 std::vector<T>& out) const {
        const auto* node = find(t, key);
        if (!node)
            return;
        const std::string name = section + "." + key;
        if (!node->is_array())
            fail(name, "must be an array of ids");
        for (const auto& item : *node->as_array()) {
            if (!item.is_integer() || item.as_integer()->get() < 0 ||
                item.as_integer()->get() > 0xfffffffe)
                fail(name, "must be an array of ids (integers from 0)");
            out.push_back(static_cast<T>(item.as_integer()->get()));
        }
    }

    void patterns(const toml::table* t, const std::string& section, const char* key,
                  std::vector<std::string>& out) const {
        const auto* node = find(t, key);
        if (!node)
            return;
        const std::string name = section + "." + key;
        if (!node->is_array())
            fail(name, "must be an array of subject patterns");
        for (const auto& item : *node->as_array()) {
            if (!item.is_string() || !valid_pattern(item.as_string()->get()))
                fail(name, "must be an array of subject patterns (tokens, *, >)");
            out.push_back(item.as_string()->get());
        }
    }

private:
    std::string path_;
    toml::table& root_;
};

} // namespace

Options load_config(const std::string& path) {
    toml::table root;
    try {
        root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        throw ConfigError(path + ":" + std::to_string(e.source().begin.line) + ": " +
                          std::string(e.description()));
    }
    Reader r(path, root);
    // [[app]] tables are the cluster's (bus::cluster::load_apps).
    r.only(root, "", {"broker", "limits", "access", "app"});
    Options options;

    if (const auto* broker = r.section("broker")) {
        r.only(*broker, "broker", {"endpoints", "heartbeat_ms"});
        if (const auto* node = broker->get("endpoints")) {
            if (!node->is_array())
                r.fail("broker.endpoints", "must be an array of strings");
            for (const auto& item : *node->as_array()) {
                if (!item.is_string())
                    r.fail("broker.endpoints", "must be an array of strings");
                const std::string text = item.as_string()->get();
                auto endpoint = parse_endpoint(text);
                if (!endpoint || endpoint.value().scheme == Endpoint::Scheme::tcp)
                    r.fail("broker.endpoints", "'" + text + "' is not ipc://PATH or unix://PATH");
                options.endpoints.push_back(text);
            }
        }
        std::int64_t heartbeat = options.heartbeat.count();
        r.integer(broker, "broker", "heartbeat_ms", heartbeat, 50, 60000);
        options.heartbeat = std::chrono::milliseconds(heartbeat);
    }
    if (const auto* limits = r.section("limits")) {
        r.only(*limits, "limits",
               {"max_message_size", "client_queue_messages", "client_queue_bytes",
                "max_subscriptions", "max_services"});
        auto& l = options.limits;
        r.integer(limits, "limits", "max_message_size", l.max_message_size, 1024, 256 << 20);
        r.integer(limits, "limits", "client_queue_messages", l.client_queue_messages, 1, 10000000);
        r.integer(limits, "limits", "client_queue_bytes", l.client_queue_bytes, 4096, 1ll << 32);
        r.integer(limits, "limits", "max_subscriptions", l.max_subscriptions, 1, 1000000);
        r.integer(limits, "limits", "max_services", l.max_services, 1, 100000);
    }
    if (const auto* access = r.section("access")) {
        r.only(*access, "access", {"allow_uids", "allow_gids", "monitor_uids", "rules"});
        r.id_list(access, "access", "allow_uids", options.allowed_uids);
        r.id_list(access, "access", "allow_gids", options.allowed_gids);
        r.id_list(access, "access", "monitor_uids", options.monitor_uids);
        if (const auto* rules = access->get("rules")) {
            if (!rules->is_array_of_tables())
                r.fail("access.rules", "must be an array of tables ([[access.rules]])");
            int index = 0;
            for (const auto& node : *rules->as_array()) {
                const std::string key = "access.rules[" + std::to_string(index++) + "]";
                const auto& t = *node.as_table();
                r.only(t, key, {"uid", "gid", "publish", "subscribe"});
                AccessRule rule;
                std::int64_t id = -1;
                r.integer(&t, key, "uid", id, 0, 0xfffffffe);
                if (id >= 0)
                    rule.uid = static_cast<uid_t>(id);
                id = -1;
                r.integer(&t, key, "gid", id, 0, 0xfffffffe);
                if (id >= 0)
                    rule.gid = static_cast<gid_t>(id);
                if (!rule.uid && !rule.gid)
                    r.fail(key, "needs a uid or a gid");
                r.patterns(&t, key, "publish", rule.publish);
                r.patterns(&t, key, "subscribe", rule.subscribe);
                options.rules.push_back(std::move(rule));
            }
        }
    }
    return options;
}

} // namespace bus::broker
