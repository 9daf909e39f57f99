"""pika (Python's standard AMQP 0-9-1 client) against the broker under test."""

import os
import unittest

from broker import CALL_TIMEOUT, BrokerTestCase, DispatchBroker, require, unique

try:
    import pika
    from pika.exceptions import ChannelClosedByBroker, UnroutableError
except ImportError:
    pika = None


def connect(url):
    params = pika.URLParameters(url)
    params.socket_timeout = CALL_TIMEOUT
    params.stack_timeout = CALL_TIMEOUT
    params.blocked_connection_timeout = CALL_TIMEOUT
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


class PikaTestCase(BrokerTestCase):
    @classmethod
    def setUpClass(cls):
        require(pika is not None, "pika (pip install pika)")
        super().setUpClass()

    def connect(self, url=None):
        connection = connect(url or self.url)
        self.addCleanup(lambda: connection.is_open and connection.close())
        return connection

    def channel(self):
        return self.connect().channel()

    def queue(self, channel, prefix="q", **kwargs):
        """A fresh queue, deleted after the test."""
        name = unique(prefix)
        channel.queue_declare(name, **kwargs)
        self.addCleanup(self.delete_queue, name)
        return name

    def delete_queue(self, name):
        if not getattr(self, "_cleanup_channel", None) or self._cleanup_channel.is_closed:
            self._cleanup_channel = self.channel()
        self._cleanup_channel.queue_delete(name)

    def consume(self, channel, queue, count, **kwargs):
        """The next `count` deliveries, failing if they take longer than CALL_TIMEOUT."""
        got = []
        for method, props, body in channel.consume(queue, inactivity_timeout=CALL_TIMEOUT, **kwargs):
            self.assertIsNotNone(method, f"no delivery within {CALL_TIMEOUT}s ({len(got)}/{count} so far)")
            got.append((method, props, body))
            if len(got) == count:
                break
        return got

    def ready_count(self, channel, queue):
        return channel.queue_declare(queue, passive=True).method.message_count

    # --- connection -------------------------------------------------------------

    def test_connect_advertises_capabilities_pika_needs(self):
        connection = self.connect()
        self.assertTrue(connection.publisher_confirms_supported, "capability publisher_confirms")
        self.assertTrue(connection.basic_nack_supported, "capability basic.nack")
        self.assertTrue(connection.consumer_cancel_notify_supported, "capability consumer_cancel_notify")
        self.assertTrue(connection.channel().is_open)

    def test_wrong_password_is_refused_with_403(self):
        with self.assertRaises(pika.exceptions.AMQPConnectionError) as caught:
            self.connect(self.url_with(password="wrong-password"))
        # pika's name for "closed during the handshake"; the broker's connection.close
        # reply code must say why (capability authentication_failure_close).
        self.assertIsInstance(caught.exception, pika.exceptions.ProbableAuthenticationError)
        self.assertIn("403", str(caught.exception), "want connection.close 403 ACCESS_REFUSED")

    # --- declare, bind, publish, get ---------------------------------------------

    def test_publish_with_confirm_reaches_bound_queue_and_basic_get(self):
        ch = self.channel()
        exchange = unique("x")
        ch.exchange_declare(exchange, exchange_type="direct", auto_delete=True)
        self.addCleanup(lambda: self.channel().exchange_delete(exchange))
        queue = self.queue(ch)
        ch.queue_bind(queue, exchange, routing_key="k")
        ch.confirm_delivery()
        props = pika.BasicProperties(
            content_type="text/plain",
            correlation_id="job-1",
            reply_to="replies",
            headers={"n": 7, "s": "x"},
            delivery_mode=2,
        )
        ch.basic_publish(exchange, "k", b"hello", props, mandatory=True)

        method, got_props, body = ch.basic_get(queue, auto_ack=True)
        self.assertIsNotNone(method, "basic.get returned get-empty")
        self.assertEqual(body, b"hello")
        self.assertEqual((method.exchange, method.routing_key, method.redelivered), (exchange, "k", False))
        self.assertEqual(method.message_count, 0)
        self.assertEqual(
            (got_props.content_type, got_props.correlation_id, got_props.reply_to, got_props.delivery_mode),
            ("text/plain", "job-1", "replies", 2),
        )
        self.assertEqual(got_props.headers, {"n": 7, "s": "x"})
        self.assertEqual(ch.basic_get(queue), (None, None, None), "queue should be empty")

    def test_server_named_queue_and_default_exchange(self):
        ch = self.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        self.assertTrue(queue.startswith("amq.gen-"), queue)
        ch.basic_publish("", queue, b"direct to queue")
        self.assertEqual(self.consume(ch, queue, 1, auto_ack=True)[0][2], b"direct to queue")

    def test_topic_exchange_routes_by_pattern(self):
        ch = self.channel()
        queue = self.queue(ch)
        ch.queue_bind(queue, "amq.topic", routing_key="web.*")
        ch.confirm_delivery()
        for key in ("web.01", "web.01.eu", "db.01"):
            ch.basic_publish("amq.topic", key, key.encode())
        self.assertEqual(self.ready_count(ch, queue), 1)
        self.assertEqual(ch.basic_get(queue, auto_ack=True)[2], b"web.01")

    def test_body_larger_than_frame_max_arrives_whole(self):
        ch = self.channel()
        queue = self.queue(ch)
        body = os.urandom(300_000)  # RabbitMQ's frame_max is 131072: several body frames
        ch.confirm_delivery()
        ch.basic_publish("", queue, body)
        self.assertEqual(ch.basic_get(queue, auto_ack=True)[2], body)

    def test_mandatory_unroutable_publish_raises_unroutable_error(self):
        ch = self.channel()
        ch.confirm_delivery()
        with self.assertRaises(UnroutableError):
            ch.basic_publish("amq.direct", unique("nowhere"), b"lost", mandatory=True)
        # Not mandatory: dropped, yet confirmed.
        ch.basic_publish("amq.direct", unique("nowhere"), b"dropped")

    # --- consume, ack, nack, qos --------------------------------------------------

    def test_consume_and_ack_empties_the_queue(self):
        ch = self.channel()
        queue = self.queue(ch)
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", queue, f"m{i}".encode())
        got = self.consume(ch, queue, 3)
        self.assertEqual([body for _, _, body in got], [b"m0", b"m1", b"m2"])
        for method, _, _ in got:
            ch.basic_ack(method.delivery_tag)
        ch.cancel()
        self.assertEqual(self.ready_count(ch, queue), 0)
        self.assertEqual(ch.basic_get(queue), (None, None, None))

    def test_nack_with_requeue_redelivers_with_redelivered_flag(self):
        ch = self.channel()
        queue = self.queue(ch)
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"again")
        method, _, body = ch.basic_get(queue)
        self.assertFalse(method.redelivered)
        ch.basic_nack(method.delivery_tag, requeue=True)
        method, _, body = self.consume(ch, queue, 1)[0]
        self.assertEqual(body, b"again")
        self.assertTrue(method.redelivered, "a requeued message must carry redelivered=true")
        ch.basic_reject(method.delivery_tag, requeue=False)
        ch.cancel()
        self.assertEqual(self.ready_count(ch, queue), 0, "reject without requeue drops the message")

    def test_prefetch_limits_unacked_deliveries(self):
        ch = self.channel()
        queue = self.queue(ch)
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", queue, f"m{i}".encode())
        ch.basic_qos(prefetch_count=2)
        first = self.consume(ch, queue, 2)
        # Two unacked deliveries: the broker may send no more, so three stay ready.
        self.assertEqual(self.ready_count(ch, queue), 3)
        ch.basic_ack(first[1][0].delivery_tag, multiple=True)
        rest = []
        for _ in range(3):
            rest += self.consume(ch, queue, 1)
            ch.basic_ack(rest[-1][0].delivery_tag)
        self.assertEqual([body for _, _, body in first + rest], [f"m{i}".encode() for i in range(5)])

    # --- queue ownership and errors -----------------------------------------------

    def test_exclusive_queue_is_locked_to_its_connection_and_goes_with_it(self):
        owner = self.connect()
        queue = unique("excl")
        owner.channel().queue_declare(queue, exclusive=True)
        with self.assertRaises(ChannelClosedByBroker) as caught:
            self.channel().queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 405, caught.exception)
        owner.close()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            self.channel().queue_declare(queue, passive=True)
        self.assertEqual(caught.exception.reply_code, 404, "exclusive queue outlived its connection")

    def test_passive_declare_of_missing_queue_closes_channel_with_404(self):
        ch = self.channel()
        with self.assertRaises(ChannelClosedByBroker) as caught:
            ch.queue_declare(unique("missing"), passive=True)
        self.assertEqual(caught.exception.reply_code, 404, caught.exception)
        self.assertTrue(ch.is_closed)
        self.assertTrue(ch.connection.is_open, "a channel error must not close the connection")


@unittest.skipIf(os.environ.get("INTEROP_BROKER_URL"), "only for a dispatch-broker this suite starts")
class DispatchBrokerProcessTest(unittest.TestCase):
    def test_sigterm_exits_cleanly(self):
        require(pika is not None, "pika (pip install pika)")
        broker = DispatchBroker()
        try:
            connect(broker.url).channel()
        finally:
            code = broker.stop()
        self.assertEqual(code, 0, "dispatch-broker should exit 0 on SIGTERM")


if __name__ == "__main__":
    unittest.main()
