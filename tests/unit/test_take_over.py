"""
Taking subscriptions over from another node: the node that held them is
told, in one control message per reactor turn, to stop delivering them.
"""

from twisted.internet.defer import succeed

from tests.helpers import make_server


class Feed:
    def __init__(self) -> None:
        self.given_up: list[str] = []

    def give_up(self, subscription_id: str) -> None:
        self.given_up.append(subscription_id)


def test_subscriptions_taken_over_in_one_turn_are_announced_together(clock):
    app = make_server(clock).app
    sent = []
    app.broker.send_to_node = lambda node, message: sent.append((node, message)) or succeed(1)
    app.take_over("sub_1", "node-a")
    app.take_over("sub_2", "node-b")
    app.take_over("sub_3", "node-a")
    app.take_over("sub_4", None)
    assert sent == [], "sent at the end of the turn"
    clock.advance(0)
    assert sorted(sent, key=lambda s: s[0]) == [
        ("node-a", {"type": "give_up", "subscription_id": "sub_1",
                    "subscription_ids": ["sub_1", "sub_3"]}),
        ("node-b", {"type": "give_up", "subscription_id": "sub_2",
                    "subscription_ids": ["sub_2"]}),
    ]
    app.take_over("sub_5", "node-a")
    clock.advance(0)
    assert sent[-1] == ("node-a", {"type": "give_up", "subscription_id": "sub_5",
                                   "subscription_ids": ["sub_5"]})


def test_a_node_gives_up_what_it_is_told_in_either_form(clock):
    app = make_server(clock).app
    feed = Feed()
    app.attached.update({"sub_1": feed, "sub_2": feed, "sub_3": feed})
    app._control({"type": "give_up", "subscription_id": "sub_1",
                  "subscription_ids": ["sub_1", "sub_2", "sub_9"]})
    app._control({"type": "give_up", "subscription_id": "sub_3"})
    assert feed.given_up == ["sub_1", "sub_2", "sub_3"]


def test_its_own_subscription_is_given_up_at_once(clock):
    app = make_server(clock).app
    feed = Feed()
    app.attached["sub_1"] = feed
    app.take_over("sub_1", app.node)
    assert feed.given_up == ["sub_1"]
