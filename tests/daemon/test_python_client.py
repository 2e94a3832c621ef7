#!/usr/bin/env python3
"""The Python client against a real ntkd (run by ctest).

    test_python_client.py --ntkd BIN --ntk-client BIN --client-dir DIR

DIR holds ntk_client.py and the generated ntk/v1/*_pb2.py (the build's
examples/protobuf_client/python). Checks: the varint writer/reader against protobuf's own
encoder and decoder; a pipelined round trip whose predictions equal, bit for bit, those
ntk-client (C++) gets for the same values under another key; stats, snapshot and error
codes; a clean SIGTERM.
"""

import argparse
import io
import math
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ARGS = None


def wait_for_file(path, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError("ntkd exited with %s before listening" % proc.returncode)
        if time.monotonic() > deadline:
            raise RuntimeError("ntkd did not write its port file in time")
        time.sleep(0.01)
    with open(path) as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line)


def serve_once(test, answer):
    """A fake server on 127.0.0.1 for one connection: waits for the first request, sends
    `answer` (bytes), then holds the connection until the client closes it. Returns the
    port; the test's cleanups close it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=run)
    thread.start()
    test.addCleanup(listener.close)
    test.addCleanup(thread.join, 60)
    return listener.getsockname()[1]


class Varints(unittest.TestCase):
    def test_against_protobuf_internal_codec(self):
        from google.protobuf.internal import decoder, encoder
        values = [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1, 2**32, 2**63, 2**64 - 1]
        rng = random.Random(7)
        values += [rng.getrandbits(rng.randint(1, 64)) for _ in range(500)]
        for v in values:
            enc = ntk_client.encode_varint(v)
            self.assertEqual(enc, encoder._VarintBytes(v))
            self.assertEqual(ntk_client.decode_varint(enc + b"\x99", 0), (v, len(enc)))
            self.assertEqual(decoder._DecodeVarint(enc, 0), (v, len(enc)))
        self.assertEqual(ntk_client.encode_varint(300), b"\xac\x02")
        self.assertEqual(len(ntk_client.encode_varint(2**64 - 1)), 10)
        self.assertIsNone(ntk_client.decode_varint(b"\xac", 0))  # truncated
        with self.assertRaises(ValueError):
            ntk_client.decode_varint(b"\xff" * 11, 0)  # longer than 10 bytes
        with self.assertRaises(ValueError):
            ntk_client.decode_varint(b"\xff" * 9 + b"\x7f", 0)  # above 2**64 - 1
        with self.assertRaises(ValueError):
            ntk_client.encode_varint(-1)

    def test_frame_reader_any_chunking(self):
        msgs = []
        for i in range(50):
            r = ntk_client.request_pb2.Request()
            r.seq = i
            r.sensor_reading.sensor_id = "k" * (i * 7)
            r.sensor_reading.value = i / 3.0
            msgs.append(r)
        stream = b"".join(ntk_client.encode_varint(m.ByteSize()) + m.SerializeToString()
                          for m in msgs)
        rng = random.Random(3)
        reader = ntk_client.FrameReader()
        got = []
        pos = 0
        while pos < len(stream):
            n = rng.randint(1, 40)
            reader.feed(stream[pos:pos + n])
            pos += n
            while True:
                frame = reader.next_frame()
                if frame is None:
                    break
                r = ntk_client.request_pb2.Request()
                r.ParseFromString(frame)
                got.append(r)
        self.assertEqual(got, msgs)
        self.assertEqual(reader.pending_bytes(), 0)


class CommandLine(unittest.TestCase):
    """ntk-client's exit status without a daemon: 2 for bad usage, 1 when it cannot
    connect."""

    def setUp(self):
        # A bound port that does not listen: connections to it are refused.
        self.closed = socket.socket()
        self.closed.bind(("127.0.0.1", 0))
        self.connect = "127.0.0.1:%d" % self.closed.getsockname()[1]

    def tearDown(self):
        self.closed.close()

    def run_client(self, *args):
        return subprocess.run([ARGS.ntk_client, "--connect", self.connect] + list(args),
                              input="", capture_output=True, text=True, timeout=60)

    def test_usage_errors_do_not_need_the_daemon(self):
        for args in (["bogus"], ["send"], ["send", "--key", "k", "/nonexistent/values"],
                     ["stats", "--key", "a", "--prefix", "b"], ["configure", "--key", "k"],
                     ["configure", "--key", "k", "not { a KeyConfig"], ["drop"]):
            out = self.run_client(*args)
            self.assertEqual(out.returncode, 2, (args, out.stderr))
            self.assertNotIn("connect", out.stderr, args)

    def test_unreachable_daemon_is_status_1(self):
        out = self.run_client("stats")
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("cannot connect", out.stderr)

    def test_an_answer_of_the_wrong_kind_is_status_1(self):
        # A server that answers a Stats with neither Stats nor Error (another version, or
        # not ntkd): said on stderr, status 1 (before: no output, status 0).
        answer = ntk_client.response_pb2.Response()
        answer.key = "k"  # no seq: a seq would answer another request (EBADMSG)
        body = answer.SerializeToString()
        port = serve_once(self, ntk_client.encode_varint(len(body)) + body)
        out = subprocess.run([ARGS.ntk_client, "--connect", "127.0.0.1:%d" % port, "stats"],
                             input="", capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertEqual(out.stderr, 'ntk-client: unexpected answer to stats: {key: "k"\n}\n')
        self.assertEqual(out.stdout, "")

    def run_python_client(self, *args):
        return subprocess.run([sys.executable, os.path.join(ARGS.client_dir, "ntk_client.py")]
                              + list(args), input="1\n", capture_output=True, text=True,
                              timeout=60)

    def test_python_client_statuses(self):
        # A message and a status, never a traceback: 2 for a bad command line, 1 when
        # ntkd cannot be reached.
        for connect in ("nohostport", "127.0.0.1:x", "127.0.0.1:70000", ":7420"):
            out = self.run_python_client("--connect", connect, "--key", "k")
            self.assertEqual(out.returncode, 2, (connect, out.stderr))
            self.assertIn("--connect: expected HOST:PORT", out.stderr)
        out = self.run_python_client("--connect", self.connect, "--key", "k")
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertTrue(out.stderr.startswith("ntk_client.py: cannot connect to "), out.stderr)
        self.assertNotIn("Traceback", out.stderr)


class Matching(unittest.TestCase):
    """The client pairs the n-th Response with the n-th Request; one it cannot read or
    that carries another request's seq ends the connection (ProtocolError)."""

    @staticmethod
    def responses(*seqs):
        out = io.BytesIO()
        for seq in seqs:
            r = ntk_client.response_pb2.Response()
            if seq is not None:
                r.seq = seq
            ntk_client.write_delimited(out, r)
        return out.getvalue()

    def test_a_response_without_seq_answers_any_request(self):
        port = serve_once(self, self.responses(None, 2))
        with ntk_client.Client("127.0.0.1", port, timeout=30) as c:
            c.send(ntk_client.Client.reading("k", 1, 1.0))
            c.send(ntk_client.Client.reading("k", 2, 2.0))
            self.assertEqual(c.pending, 2)
            self.assertFalse(c.receive().HasField("seq"))
            self.assertEqual(c.receive().seq, 2)
            self.assertEqual(c.pending, 0)

    def test_another_requests_seq_ends_the_connection(self):
        for sent, answer, message in (
                (5, 6, "response seq 6 does not answer the request with seq 5"),
                (None, 6, "response seq 6 does not answer the request without a seq")):
            # The answer that follows (no seq: it would match anything) is never handed
            # out: the stream is over, every later receive() raises the same error.
            port = serve_once(self, self.responses(6, None))
            with ntk_client.Client("127.0.0.1", port, timeout=30) as c:
                request = ntk_client.Client.reading("k", 0, 1.0)
                if sent is None:
                    request.ClearField("seq")
                else:
                    request.seq = sent
                c.send(request)
                c.send(ntk_client.Client.reading("k", 7, 1.0))
                for _ in range(2):
                    with self.assertRaises(ntk_client.ProtocolError) as raised:
                        c.receive()
                    self.assertEqual(str(raised.exception), message)
                self.assertEqual(c._sock.fileno(), -1)  # closed
                self.assertEqual(c.pending, 2)  # as sent: none of them was answered

    def test_an_unreadable_stream_is_a_protocol_error(self):
        for answer, message in ((b"\xff\xff\xff\xff\x0f", "above the limit"),
                                (b"\x02\xff\xff", "not a Response")):
            port = serve_once(self, answer)
            with ntk_client.Client("127.0.0.1", port, timeout=30) as c:
                c.send(ntk_client.Client.reading("k", 1, 1.0))
                with self.assertRaises(ntk_client.ProtocolError) as raised:
                    c.receive()
                self.assertIn(message, str(raised.exception))
                self.assertEqual(c._sock.fileno(), -1)

    def test_the_command_line_client_says_so_with_status_1(self):
        port = serve_once(self, self.responses(5))
        out = subprocess.run(
            [sys.executable, os.path.join(ARGS.client_dir, "ntk_client.py"), "--connect",
             "127.0.0.1:%d" % port, "--key", "k"], input="1\n", capture_output=True,
            text=True, timeout=60)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertEqual(out.stderr, "ntk_client.py: 127.0.0.1:%d: response seq 5 does not "
                         "answer the request with seq 0\n" % port)
        self.assertEqual(out.stdout, "seq,key,status,value,mean,sd,z,anomaly\n")


class RoundTrip(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="ntk-py-")
        cls.ports_file = os.path.join(cls.tmp.name, "ports")
        cls.log = open(os.path.join(cls.tmp.name, "ntkd.log"), "w")
        cls.ntkd = subprocess.Popen(
            [ARGS.ntkd, "--listen", "127.0.0.1:0", "--port-file", cls.ports_file,
             "--snapshot-dir", os.path.join(cls.tmp.name, "snapshots"),
             "--snapshot-interval", "0"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        ports = wait_for_file(cls.ports_file, cls.ntkd)
        cls.host, cls.port = ports["tcp"].rsplit(":", 1)
        cls.port = int(cls.port)

    @classmethod
    def tearDownClass(cls):
        if cls.ntkd.poll() is None:
            cls.ntkd.kill()
            cls.ntkd.wait()
        cls.log.close()
        cls.tmp.cleanup()

    def test_1_predictions_equal_the_cpp_client(self):
        values = [math.sin(0.25 * t) + 0.3 * math.cos(0.061 * t) for t in range(200)]
        values[120] = None  # a missing measurement
        with ntk_client.Client(self.host, self.port) as c:
            for seq, v in enumerate(values):  # pipelined: all sent before reading
                c.send(ntk_client.Client.reading("py", seq, v, 1_700_000_000 * 10**9 + seq))
            answers = [c.receive() for _ in values]
        self.assertEqual([a.seq for a in answers], list(range(200)))
        self.assertTrue(all(a.key == "py" and a.HasField("prediction") for a in answers))
        status = [a.prediction.status for a in answers]
        self.assertEqual(status[0], ntk_client.response_pb2.Prediction.STATUS_WARMING_UP)
        self.assertEqual(status[120], ntk_client.response_pb2.Prediction.STATUS_MISSING)
        scored = [a for a in answers
                  if a.prediction.status == ntk_client.response_pb2.Prediction.STATUS_SCORED]
        self.assertGreater(len(scored), 150)
        for a in scored:
            p = a.prediction
            self.assertGreater(p.variance, 0.0)
            # z is (value - mean) / sd, computed by the daemon.
            self.assertAlmostEqual(p.z, (p.value - p.mean) / math.sqrt(p.variance), delta=1e-9)

        # The C++ client, same values and times, another key: the same numbers exactly.
        # Times go through text as whole seconds, for both clients.
        text = "".join("%d,%s\n" % (1_700_000_000 + i, "" if v is None else repr(v))
                       for i, v in enumerate(values))
        with ntk_client.Client(self.host, self.port) as c:
            for seq, v in enumerate(values):
                c.send(ntk_client.Client.reading("py2", seq, v, (1_700_000_000 + seq) * 10**9))
            py2 = [c.receive() for _ in values]
        out = subprocess.run(
            [ARGS.ntk_client, "--connect", "%s:%d" % (self.host, self.port), "send",
             "--key", "cc"], input=text, capture_output=True, text=True, timeout=60, check=True)
        lines = out.stdout.strip().split("\n")
        self.assertEqual(lines[0], "seq,key,status,value,mean,sd,z,anomaly")
        self.assertEqual(len(lines), 201)
        compared = 0
        for a, line in zip(py2, lines[1:]):
            seq, key, st, value, mean, sd, z, anomaly = line.split(",")
            self.assertEqual((int(seq), key), (a.seq, "cc"))
            p = a.prediction
            if p.HasField("mean"):
                self.assertEqual(float(mean), p.mean)  # bit-identical doubles
                self.assertEqual(float(sd), math.sqrt(p.variance))
                compared += 1
            else:
                self.assertEqual(mean, "")
            if p.HasField("z"):
                self.assertEqual(float(z), p.z)
            self.assertEqual(int(anomaly), 1 if p.anomaly else 0)
        self.assertGreater(compared, 150)

    def test_2_stats_snapshot_and_errors(self):
        with ntk_client.Client(self.host, self.port) as c:
            s = c.stats(key="py")
            self.assertTrue(s.HasField("stats"))
            k = s.stats.keys[0]
            self.assertEqual(k.key, "py")
            self.assertEqual(k.counters.observations, 200)
            self.assertEqual(k.counters.missing, 1)
            self.assertEqual(k.score.n, k.counters.scored)
            self.assertEqual(k.last_seq, 199)

            ack = c.snapshot()
            self.assertTrue(ack.HasField("ack"), ack)
            self.assertEqual(ack.ack.keys_affected, 3)
            with open(ack.ack.snapshot_path, "rb") as f:
                head = f.read(8)
            self.assertIn(b"\x0dNTKS", head)  # the header's fixed32 magic

            bad = c.observe("py", 500, float("nan"))
            self.assertEqual(bad.error.code, ntk_client.response_pb2.ERROR_CODE_NON_FINITE_VALUE)
            self.assertEqual(bad.seq, 500)
            dup = c.observe("py", 199, 1.0)
            self.assertEqual(dup.error.code, ntk_client.response_pb2.ERROR_CODE_DUPLICATE_SEQ)
            unknown = c.stats(key="nope")
            self.assertEqual(unknown.error.code, ntk_client.response_pb2.ERROR_CODE_UNKNOWN_KEY)
            conf = c.configure("tuned", lags=3, budget=16, kernel="rbf:lengthscale=0.7")
            self.assertTrue(conf.HasField("ack"), conf)
            c.observe("tuned", 0, 1.0)
            cfg = c.stats(key="tuned").stats.keys[0].config.series
            self.assertEqual((cfg.lags, cfg.model.budget), (3, 16))
            self.assertEqual(cfg.model.kernel.type, ntk_client.config_pb2.KERNEL_TYPE_RBF)
            self.assertEqual(cfg.model.kernel.lengthscale, 0.7)

    def check_streams_a_live_pipe(self, command):
        """Values written one at a time to a pipe are answered one at a time, without
        waiting for a window to fill or for the end of the input."""
        env = dict(os.environ)
        env.pop("PYTHONUNBUFFERED", None)  # as users run it: stdout to a pipe is buffered
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        pending = bytearray()

        def read_line(timeout=10.0):  # unbuffered: select() sees what is not read yet
            deadline = time.monotonic() + timeout
            while b"\n" not in pending:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                    raise AssertionError("no answer within %g s" % timeout)
                data = os.read(proc.stdout.fileno(), 4096)
                if not data:
                    raise AssertionError("the client exited: %r" % proc.stderr.read())
                pending.extend(data)
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            return line.decode()

        try:
            self.assertEqual(read_line(), "seq,key,status,value,mean,sd,z,anomaly")
            for i in range(3):
                proc.stdin.write(b"%r\n# a comment\n" % (0.5 * i))
                proc.stdin.flush()
                self.assertTrue(read_line().startswith("%d," % i))
            proc.stdin.close()
            self.assertEqual(proc.wait(timeout=30), 0, proc.stderr.read())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()

    def test_2b_ntk_client_streams_a_live_pipe(self):
        self.check_streams_a_live_pipe(
            [ARGS.ntk_client, "--connect", "%s:%d" % (self.host, self.port), "send", "--key",
             "live-cc"])

    def test_2c_python_client_streams_a_live_pipe(self):
        self.check_streams_a_live_pipe(
            [sys.executable, os.path.join(ARGS.client_dir, "ntk_client.py"), "--connect",
             "%s:%d" % (self.host, self.port), "--key", "live-py", "--proto-path",
             ARGS.client_dir])

    def test_2d_a_bad_input_line_ends_the_run_after_the_lines_before_it(self):
        text = "5\n6\n1,2,3\n7\n"
        for name, command in (
                ("ntk-client", [ARGS.ntk_client, "--connect", "%s:%d" % (self.host, self.port),
                                "send", "--key", "bad-cc"]),
                ("ntk_client.py", [sys.executable, os.path.join(ARGS.client_dir, "ntk_client.py"),
                                   "--connect", "%s:%d" % (self.host, self.port), "--key",
                                   "bad-py"])):
            out = subprocess.run(command, input=text, capture_output=True, text=True,
                                 timeout=60)
            self.assertEqual(out.returncode, 2, (name, out.stderr))
            self.assertEqual(out.stderr, "%s: line 3: bad value '2,3'\n" % name)
            lines = out.stdout.strip().split("\n")
            self.assertEqual(len(lines), 3, out.stdout)  # the header, then seq 0 and 1
            self.assertTrue(lines[1].startswith("0,bad-") and lines[2].startswith("1,bad-"))
        with ntk_client.Client(self.host, self.port) as c:
            for key in ("bad-cc", "bad-py"):
                self.assertEqual(c.stats(key=key).stats.keys[0].counters.observations, 2)

    def test_3_sigterm_drains_and_exits_0(self):
        self.ntkd.send_signal(signal.SIGTERM)
        self.assertEqual(self.ntkd.wait(timeout=30), 0)
        with open(os.path.join(self.tmp.name, "ntkd.log")) as f:
            log = f.read()
        self.assertIn('msg="snapshot written" reason=shutdown', log)
        self.assertFalse(os.path.exists(self.ports_file))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ntkd", required=True)
    parser.add_argument("--ntk-client", required=True)
    parser.add_argument("--client-dir", required=True)
    ARGS, rest = parser.parse_known_args()
    sys.path.insert(0, ARGS.client_dir)
    import ntk_client  # noqa: E402  (the module under test, beside its generated code)
    ntk_client._import_generated(ARGS.client_dir)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
