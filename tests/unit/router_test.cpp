// The router alone: no sockets, no busd, no loop. Clients are links that record what the
// router sends them (and refuse it when told to), so every routing promise of DESIGN.md's
// delivery table is checked here at the level where it is made.
#include "broker/router.hpp"

#include <bus/frame.hpp>
#include <bus/v1/broker.pb.h>

#include <google/protobuf/descriptor.pb.h>
#include <gtest/gtest.h>

#include <deque>
#include <thread>

namespace {

using bus::broker::Client;
using bus::broker::Link;
using bus::broker::Queued;
using bus::broker::Router;
namespace v1 = bus::v1;

struct Sent {
    v1::Envelope header;
    std::string payload;
    std::size_t fds = 0;
};

// What a link saw, kept apart from the link: the router destroys a client's link with the
// client, and a test still reads what it saw.
struct Record {
    bool accepting = true;
    bool closed = false;
    std::deque<Sent> sent;
    std::vector<Queued> queued_items;
};

class RecordingLink final : public Link {
public:
    RecordingLink(Kind kind, std::shared_ptr<Record> record)
        : Link(kind), record_(std::move(record)) {}
    bool send(std::string_view header, std::string_view payload, std::vector<bus::UniqueFd> fds,
              const Queued& queued) override {
        if (!record_->accepting)
            return false;
        Sent s;
        EXPECT_TRUE(s.header.ParseFromArray(header.data(), static_cast<int>(header.size())));
        EXPECT_EQ(s.header.fd_count(), fds.size());
        s.payload = std::string(payload);
        s.fds = fds.size();
        record_->sent.push_back(std::move(s));
        record_->queued_items.push_back(queued);
        return true;
    }
    bool ready() const override { return record_->accepting; }
    void close() override { record_->closed = true; }

private:
    std::shared_ptr<Record> record_;
};

class RouterTest : public ::testing::Test {
protected:
    RouterTest() : router_(options_, "test-broker") {}

    struct Peer {
        Client* client; // valid until the router removes it
        std::shared_ptr<Record> link;
    };
    Peer connect(Link::Kind kind = Link::Kind::channel) {
        auto record = std::make_shared<Record>();
        Client& c = router_.add(std::make_unique<RecordingLink>(kind, record));
        return {&c, record};
    }

    void send(Peer& p, v1::Kind kind, const std::string& subject, std::string_view payload = {},
              std::uint64_t id = 0, std::vector<bus::UniqueFd> fds = {}) {
        v1::Envelope in;
        in.set_kind(kind);
        in.set_subject(subject);
        in.set_id(id);
        in.set_fd_count(static_cast<std::uint32_t>(fds.size()));
        router_.handle(*p.client, in, payload, fds);
    }
    void request(Peer& p, const std::string& service, std::uint64_t id, std::int64_t deadline_ns) {
        v1::Envelope in;
        in.set_kind(v1::KIND_REQUEST);
        in.set_subject(service);
        in.set_id(id);
        in.set_deadline_unix_ns(deadline_ns);
        std::vector<bus::UniqueFd> none;
        router_.handle(*p.client, in, "", none);
    }
    // `p` answers the request busd numbered `broker_id`.
    void reply(Peer& p, std::uint64_t broker_id, std::string_view payload) {
        v1::Envelope in;
        in.set_kind(v1::KIND_REPLY);
        in.set_correlation_id(broker_id);
        std::vector<bus::UniqueFd> none;
        router_.handle(*p.client, in, payload, none);
    }
    void control(Peer& p, const std::string& op, const google::protobuf::Message& body,
                 std::uint64_t id = 0) {
        send(p, v1::KIND_CONTROL, op, body.SerializeAsString(), id);
    }
    void subscribe(Peer& p, std::uint64_t sid, const std::string& pattern,
                   const std::string& queue = {}) {
        v1::Subscribe sub;
        sub.set_sid(sid);
        sub.set_pattern(pattern);
        sub.set_queue_group(queue);
        control(p, "sub", sub);
    }
    void serve(Peer& p, const std::string& service) {
        v1::Serve s;
        s.set_service(service);
        control(p, "serve", s);
    }
    // The errors `p` got, as "wire_name:detail".
    static std::vector<std::string> errors(const Peer& p) {
        std::vector<std::string> out;
        for (const auto& s : p.link->sent)
            if (s.header.kind() == v1::KIND_ERROR)
                out.push_back(s.header.subject() + ":" +
                              (s.header.headers_size() ? s.header.headers(0).value() : ""));
        return out;
    }
    static std::vector<const Sent*> of_kind(const Peer& p, v1::Kind kind) {
        std::vector<const Sent*> out;
        for (const auto& s : p.link->sent)
            if (s.header.kind() == kind)
                out.push_back(&s);
        return out;
    }

    bus::broker::Options options_;
    Router router_;
};

TEST_F(RouterTest, PublishReachesMatchingSubscribersStampedWithTheSender) {
    auto a = connect(), b = connect(), c = connect(), pub = connect();
    subscribe(a, 7, "orders.*.created");
    subscribe(b, 8, "orders.>");
    subscribe(c, 9, "prices.>");
    send(pub, v1::KIND_PUBLISH, "orders.eu.created", "payload");

    for (auto [peer, sid] : {std::pair{&a, 7u}, std::pair{&b, 8u}}) {
        auto got = of_kind(*peer, v1::KIND_PUBLISH);
        ASSERT_EQ(got.size(), 1u);
        EXPECT_EQ(got[0]->header.subject(), "orders.eu.created");
        EXPECT_EQ(got[0]->header.subscription_id(), sid);
        EXPECT_EQ(got[0]->header.source(), pub.client->id);
        EXPECT_EQ(got[0]->payload, "payload");
    }
    EXPECT_TRUE(of_kind(c, v1::KIND_PUBLISH).empty());
    EXPECT_TRUE(errors(pub).empty());
}

TEST_F(RouterTest, ASourceAClientClaimsIsReplacedByItsId) {
    auto sub = connect(), pub = connect();
    subscribe(sub, 1, "a");
    v1::Envelope in;
    in.set_kind(v1::KIND_PUBLISH);
    in.set_subject("a");
    in.set_source("busd"); // a lie
    std::vector<bus::UniqueFd> none;
    router_.handle(*pub.client, in, "x", none);
    ASSERT_EQ(sub.link->sent.size(), 1u);
    EXPECT_EQ(sub.link->sent[0].header.source(), pub.client->id);
}

TEST_F(RouterTest, AQueueGroupGetsEachMessageOnceInTurn) {
    auto w1 = connect(), w2 = connect(), all = connect(), pub = connect();
    subscribe(w1, 1, "jobs", "workers");
    subscribe(w2, 1, "jobs", "workers");
    subscribe(all, 1, "jobs");
    for (int i = 0; i < 10; ++i)
        send(pub, v1::KIND_PUBLISH, "jobs", std::to_string(i));
    EXPECT_EQ(w1.link->sent.size(), 5u);
    EXPECT_EQ(w2.link->sent.size(), 5u);
    EXPECT_EQ(all.link->sent.size(), 10u);
}

TEST_F(RouterTest, ASlowSubscriberLosesMessagesAloneAndIsToldHowMany) {
    auto slow = connect(), fast = connect(), pub = connect();
    subscribe(slow, 1, "t");
    subscribe(fast, 1, "t");
    slow.link->accepting = false;
    for (int i = 0; i < 3; ++i)
        send(pub, v1::KIND_PUBLISH, "t", "m");
    EXPECT_EQ(fast.link->sent.size(), 3u);
    EXPECT_TRUE(slow.link->sent.empty());
    EXPECT_EQ(slow.client->dropped, 3u);
    EXPECT_TRUE(errors(pub).empty()); // the publisher never hears of it

    slow.link->accepting = true;
    send(pub, v1::KIND_PUBLISH, "t", "again");
    ASSERT_EQ(slow.link->sent.size(), 2u);
    EXPECT_EQ(slow.link->sent[0].header.kind(), v1::KIND_CONTROL);
    EXPECT_EQ(slow.link->sent[0].header.subject(), "slow_consumer");
    v1::SlowConsumer notice;
    ASSERT_TRUE(notice.ParseFromString(slow.link->sent[0].payload));
    EXPECT_EQ(notice.dropped(), 3u);
    EXPECT_EQ(slow.link->sent[1].payload, "again");

    const auto stats = router_.stats();
    ASSERT_EQ(stats.subjects_size(), 1);
    EXPECT_EQ(stats.subjects(0).msgs(), 5u);
    EXPECT_EQ(stats.subjects(0).dropped(), 3u);
    EXPECT_EQ(stats.dropped(), 3u);
}

TEST_F(RouterTest, AMessageRefusedAfterItWasTakenIsUndoneAsADrop) {
    // A ZeroMQ link takes frames into a batch and may have them refused when it hands the
    // batch over: the router then counts the delivery as a drop.
    auto sub = connect(Link::Kind::zmq_ipc), pub = connect();
    subscribe(sub, 1, "t");
    send(pub, v1::KIND_PUBLISH, "t", "12345");
    ASSERT_EQ(sub.link->queued_items.size(), 1u);
    router_.refused(*sub.client, Queued{sub.link->queued_items[0].delivery, 0,
                                        sub.link->queued_items[0].stats, 0, 5});
    EXPECT_EQ(sub.client->msgs_out, 0u);
    EXPECT_EQ(sub.client->dropped, 1u);
    const auto stats = router_.stats();
    EXPECT_EQ(stats.subjects(0).msgs(), 0u);
    EXPECT_EQ(stats.subjects(0).bytes(), 0u);
    EXPECT_EQ(stats.subjects(0).dropped(), 1u);
}

TEST_F(RouterTest, ARequestRefusedAfterItWasTakenIsServiceLostAndForgotten) {
    auto service = connect(Link::Kind::zmq_ipc), requester = connect();
    serve(service, "svc");
    send(requester, v1::KIND_REQUEST, "svc", "q", 7);
    ASSERT_EQ(service.link->queued_items.size(), 1u);
    Queued taken = service.link->queued_items[0];
    ASSERT_NE(taken.request, 0u);
    router_.refused(*service.client, taken);
    EXPECT_EQ(errors(requester), std::vector<std::string>{"service_lost:instance overloaded"});
    // Its answer, had it come, goes nowhere: the requester had exactly one.
    reply(service, taken.request, "late");
    EXPECT_TRUE(of_kind(requester, v1::KIND_REPLY).empty());
}

TEST_F(RouterTest, ARefusedSlowConsumerNoticeIsToldAgain) {
    auto slow = connect(Link::Kind::zmq_ipc), pub = connect();
    subscribe(slow, 1, "t");
    slow.link->accepting = false;
    send(pub, v1::KIND_PUBLISH, "t");
    send(pub, v1::KIND_PUBLISH, "t");
    slow.link->accepting = true;
    send(pub, v1::KIND_PUBLISH, "t"); // the notice (2 dropped), then the message
    ASSERT_EQ(slow.link->queued_items.size(), 2u);
    EXPECT_EQ(slow.link->queued_items[0].told, 2u);
    // ZeroMQ refuses the batch that held the notice and the message: 3 lost, untold.
    router_.refused(*slow.client, slow.link->queued_items[0]);
    router_.refused(*slow.client, slow.link->queued_items[1]);
    slow.link->sent.clear();
    send(pub, v1::KIND_PUBLISH, "t");
    ASSERT_EQ(slow.link->sent.size(), 2u);
    v1::SlowConsumer notice;
    ASSERT_TRUE(notice.ParseFromString(slow.link->sent[0].payload));
    EXPECT_EQ(notice.dropped(), 3u);
}

TEST_F(RouterTest, ARequestGetsItsReplyWithItsOwnId) {
    auto service = connect(), requester = connect();
    serve(service, "prices.quote");
    send(requester, v1::KIND_REQUEST, "prices.quote", "q", 42);
    auto requests = of_kind(service, v1::KIND_REQUEST);
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(requests[0]->payload, "q");
    EXPECT_EQ(requests[0]->header.source(), requester.client->id);

    reply(service, requests[0]->header.id(), "a");
    auto replies = of_kind(requester, v1::KIND_REPLY);
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0]->header.correlation_id(), 42u);
    EXPECT_EQ(replies[0]->payload, "a");

    // A second reply to the same request goes nowhere: exactly one answer.
    reply(service, requests[0]->header.id(), "again");
    EXPECT_EQ(of_kind(requester, v1::KIND_REPLY).size(), 1u);
}

TEST_F(RouterTest, RequestsAreSharedAmongInstancesInTurn) {
    auto s1 = connect(), s2 = connect(), requester = connect();
    serve(s1, "svc");
    serve(s2, "svc");
    for (int i = 0; i < 6; ++i)
        send(requester, v1::KIND_REQUEST, "svc", "", static_cast<std::uint64_t>(i + 1));
    EXPECT_EQ(of_kind(s1, v1::KIND_REQUEST).size(), 3u);
    EXPECT_EQ(of_kind(s2, v1::KIND_REQUEST).size(), 3u);
}

TEST_F(RouterTest, NobodyServingIsNoRespondersAtOnce) {
    auto requester = connect();
    send(requester, v1::KIND_REQUEST, "nobody.home", "", 5);
    ASSERT_EQ(errors(requester), std::vector<std::string>{"no_responders:nobody.home"});
    EXPECT_EQ(requester.link->sent[0].header.correlation_id(), 5u);
}

TEST_F(RouterTest, AnInstanceThatLeavesIsServiceLostForWhatItHeld) {
    auto service = connect(), requester = connect();
    serve(service, "svc");
    send(requester, v1::KIND_REQUEST, "svc", "", 1);
    send(requester, v1::KIND_REQUEST, "svc", "", 2);
    router_.remove(service.client->num);
    EXPECT_TRUE(service.link->closed);
    const auto errs = of_kind(requester, v1::KIND_ERROR);
    ASSERT_EQ(errs.size(), 2u);
    EXPECT_EQ(errs[0]->header.subject(), "service_lost");
    EXPECT_EQ(errs[0]->header.correlation_id(), 1u); // in the order they were routed
    EXPECT_EQ(errs[1]->header.correlation_id(), 2u);
    // And the service is gone with it.
    send(requester, v1::KIND_REQUEST, "svc", "", 3);
    EXPECT_EQ(errors(requester).back(), "no_responders:svc");
}

TEST_F(RouterTest, ARequestRefusedByItsInstanceIsServiceLost) {
    auto service = connect(), requester = connect();
    serve(service, "svc");
    service.link->accepting = false;
    send(requester, v1::KIND_REQUEST, "svc", "", 9);
    EXPECT_EQ(errors(requester), std::vector<std::string>{"service_lost:instance overloaded"});
}

std::int64_t unix_ns_now() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

TEST_F(RouterTest, ARequestPastItsDeadlineIsNeverDelivered) {
    auto service = connect(), requester = connect();
    serve(service, "svc");
    request(requester, "svc", 1, unix_ns_now() - 1); // its requester has given up
    EXPECT_TRUE(of_kind(service, v1::KIND_REQUEST).empty());
    EXPECT_EQ(errors(requester), std::vector<std::string>{"expired:svc"});
    const auto stats = router_.stats();
    EXPECT_EQ(stats.expired(), 1u);
    ASSERT_EQ(stats.services_size(), 1);
    EXPECT_EQ(stats.services(0).name(), "svc");
    EXPECT_EQ(stats.services(0).expired(), 1u);
    EXPECT_EQ(stats.services(0).requests(), 0u);

    // One with time left is delivered, and counted as routed.
    request(requester, "svc", 2, unix_ns_now() + 60'000'000'000);
    EXPECT_EQ(of_kind(service, v1::KIND_REQUEST).size(), 1u);
    EXPECT_EQ(router_.stats().services(0).requests(), 1u);
}

TEST_F(RouterTest, ARequestThatExpiresInFlightIsForgottenAtTheHeartbeat) {
    auto service = connect(), requester = connect();
    serve(service, "svc");
    // Delivered with time left, then past: the deadline passing is what is tested.
    const auto deadline = unix_ns_now() + 200'000'000;
    request(requester, "svc", 1, deadline);
    const auto routed = of_kind(service, v1::KIND_REQUEST);
    ASSERT_EQ(routed.size(), 1u);
    const auto broker_id = routed[0]->header.id();
    while (unix_ns_now() <= deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    router_.heartbeat();
    reply(service, broker_id, "late");
    EXPECT_TRUE(of_kind(requester, v1::KIND_REPLY).empty());
}

TEST_F(RouterTest, OnlyTheChosenInstanceMayAnswer) {
    auto service = connect(), other = connect(), requester = connect();
    serve(service, "svc");
    send(requester, v1::KIND_REQUEST, "svc", "", 1);
    reply(other, of_kind(service, v1::KIND_REQUEST)[0]->header.id(), "forged");
    EXPECT_TRUE(of_kind(requester, v1::KIND_REPLY).empty());
}

TEST_F(RouterTest, ADirectMessageReachesTheClientItNames) {
    auto from = connect(), to = connect();
    send(from, v1::KIND_DIRECT, to.client->id, "hi", 3);
    auto got = of_kind(to, v1::KIND_DIRECT);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0]->payload, "hi");
    EXPECT_EQ(got[0]->header.source(), from.client->id);
    send(from, v1::KIND_DIRECT, "c999", "x", 4);
    EXPECT_EQ(errors(from), std::vector<std::string>{"no_such_client:c999"});
}

TEST_F(RouterTest, FdsGoOnlyWhereALinkCarriesThem) {
    auto zmq_service = connect(Link::Kind::zmq_ipc), requester = connect();
    serve(zmq_service, "svc");
    std::vector<bus::UniqueFd> fds;
    fds.emplace_back(::dup(0));
    send(requester, v1::KIND_REQUEST, "svc", "", 1, std::move(fds));
    ASSERT_EQ(errors(requester).size(), 1u);
    EXPECT_EQ(errors(requester)[0].substr(0, 18), "fds_not_supported:");
    EXPECT_TRUE(of_kind(zmq_service, v1::KIND_REQUEST).empty());

    auto sub = connect();
    subscribe(sub, 1, "t");
    std::vector<bus::UniqueFd> more;
    more.emplace_back(::dup(0));
    send(requester, v1::KIND_PUBLISH, "t", "", 2, std::move(more));
    EXPECT_TRUE(sub.link->sent.empty()); // a publish has many receivers: never with fds
}

TEST_F(RouterTest, BadSubjectsAndTheBrokersOwnAreRefused) {
    auto c = connect(), sub = connect();
    subscribe(sub, 1, ">");
    send(c, v1::KIND_PUBLISH, "a..b", "", 1);
    send(c, v1::KIND_PUBLISH, "$sys.client.connected", "", 2);
    subscribe(c, 3, "a.>.b");
    EXPECT_EQ(errors(c),
              (std::vector<std::string>{"invalid_subject:a..b", "forbidden:$sys is the broker's",
                                        "invalid_subject:a.>.b"}));
    EXPECT_TRUE(sub.link->sent.empty());
}

TEST_F(RouterTest, AccessRulesBoundWhatARestrictedClientDoes) {
    bus::broker::AccessRule rule;
    rule.uid = 12345;
    rule.publish = {"public.>"};
    rule.subscribe = {"public.>"};
    options_.rules.push_back(rule);
    auto restricted = connect(), sub = connect();
    restricted.client->uid = 12345;
    restricted.client->rule = router_.access().rule_for(12345, 12345);
    ASSERT_NE(restricted.client->rule, nullptr);
    subscribe(sub, 1, ">");
    send(restricted, v1::KIND_PUBLISH, "private.x", "", 1);
    send(restricted, v1::KIND_PUBLISH, "public.x", "", 2);
    subscribe(restricted, 3, ">");
    subscribe(restricted, 4, "public.*");
    EXPECT_EQ(errors(restricted), (std::vector<std::string>{"forbidden:private.x", "forbidden:>"}));
    ASSERT_EQ(of_kind(sub, v1::KIND_PUBLISH).size(), 1u);
    EXPECT_EQ(of_kind(sub, v1::KIND_PUBLISH)[0]->header.subject(), "public.x");
    EXPECT_TRUE(router_.access().allowed(12345, 1));
    EXPECT_FALSE(router_.access().allowed(54321, 54321));
}

TEST_F(RouterTest, AClientThatLeavesTakesItsSubscriptionsWithIt) {
    auto sub = connect(), pub = connect();
    subscribe(sub, 1, "t");
    send(pub, v1::KIND_PUBLISH, "t"); // the route is cached now
    router_.remove(sub.client->num);
    auto again = connect();
    subscribe(again, 1, "other");
    send(pub, v1::KIND_PUBLISH, "t");
    EXPECT_EQ(router_.stats().clients(), 2u);
    EXPECT_TRUE(errors(pub).empty());
    // The route was worked out anew: nobody is left to count a delivery to.
    const auto stats = router_.stats();
    ASSERT_EQ(stats.subjects_size(), 1);
    EXPECT_EQ(stats.subjects(0).msgs(), 1u);
}

TEST_F(RouterTest, ASilentZeroMqClientIsDroppedAtTheHeartbeatAndAChannelIsPinged) {
    options_.heartbeat = std::chrono::milliseconds(1);
    auto zmq = connect(Link::Kind::zmq_ipc), channel = connect();
    zmq.client->last_seen -= std::chrono::seconds(1);
    channel.client->last_seen -= std::chrono::seconds(1);
    router_.heartbeat();
    EXPECT_TRUE(zmq.link->closed);
    EXPECT_FALSE(channel.link->closed);
    ASSERT_EQ(channel.link->sent.size(), 1u);
    EXPECT_EQ(channel.link->sent[0].header.subject(), "ping");
}

TEST_F(RouterTest, TheTypeRegistryKeepsOnlyASetThatDefinesTheType) {
    auto c = connect();
    google::protobuf::FileDescriptorSet set;
    v1::Envelope::descriptor()->file()->CopyTo(set.add_file());
    v1::Envelope in;
    in.set_kind(v1::KIND_CONTROL);
    in.set_subject("register_type");
    in.set_type_url(std::string(bus::frame::type_url_prefix) + "bus.v1.Envelope");
    std::vector<bus::UniqueFd> none;
    router_.handle(*c.client, in, set.SerializeAsString(), none);
    in.set_type_url(std::string(bus::frame::type_url_prefix) + "bus.v1.NoSuchType");
    router_.handle(*c.client, in, set.SerializeAsString(), none);
    in.set_id(7);
    router_.handle(*c.client, in, "not a descriptor set \xff\xff", none);
    EXPECT_EQ(errors(c), (std::vector<std::string>{"bad_request:the set does not define "
                                                   "bus.v1.NoSuchType",
                                                   "bad_request:not a FileDescriptorSet"}));
    send(c, v1::KIND_REQUEST, "$sys.types", "", 8);
    auto replies = of_kind(c, v1::KIND_REPLY);
    ASSERT_EQ(replies.size(), 1u);
    v1::TypeList types;
    ASSERT_TRUE(types.ParseFromString(replies[0]->payload));
    ASSERT_EQ(types.types_size(), 1);
    EXPECT_EQ(types.types(0).name(), "bus.v1.Envelope");
    EXPECT_EQ(types.types(0).registered_by(), c.client->id);
}

TEST_F(RouterTest, OnlyBusdsOwnUidMayMonitorAndMonitorsSeeCopies) {
    auto watcher = connect(), sub = connect(), pub = connect();
    watcher.client->uid = ::getuid();
    auto stranger = connect();
    stranger.client->uid = ::getuid() + 1;
    v1::Subscribe m;
    m.set_sid(1);
    m.set_pattern(">");
    control(watcher, "monitor", m);
    control(stranger, "monitor", m);
    EXPECT_EQ(errors(stranger).size(), 1u);
    subscribe(sub, 1, "t");
    send(pub, v1::KIND_PUBLISH, "t", "data", 11);
    auto copies = of_kind(watcher, v1::KIND_PUBLISH);
    ASSERT_EQ(copies.size(), 1u);
    EXPECT_EQ(copies[0]->header.monitored_kind(), v1::KIND_PUBLISH);
    EXPECT_EQ(copies[0]->payload, "data");
    EXPECT_EQ(copies[0]->header.source(), pub.client->id);
}

TEST_F(RouterTest, EventsReachOnlyTheirSubscribers) {
    auto sub = connect();
    subscribe(sub, 1, "$sys.client.>");
    auto named = connect();
    v1::Hello hello;
    hello.set_name("worker");
    control(named, "hello", hello, 1);
    auto events = of_kind(sub, v1::KIND_PUBLISH);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0]->header.subject(), "$sys.client.connected");
    EXPECT_EQ(events[0]->header.source(), "busd");
    v1::ClientInfo info;
    ASSERT_TRUE(info.ParseFromString(events[0]->payload));
    EXPECT_EQ(info.name(), "worker");
    EXPECT_EQ(of_kind(named, v1::KIND_CONTROL)[0]->header.subject(), "welcome");
}

} // namespace
