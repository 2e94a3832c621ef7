#!/usr/bin/env python3
"""A Python client for ntkd, with the protobuf code generated from proto/ntk/v1.

Dependencies: Python 3 and python3-protobuf (Debian's 3.21 runtime) only. The generated
modules (ntk/v1/*_pb2.py) come from `protoc --python_out` at build time; the build puts
them, with a copy of this file, in <build>/examples/protobuf_client/python, and
`cmake --install` in <prefix>/share/ntkstream/python: run that copy as it is, or pass the
directory with --proto-path, set NTK_PROTO_PYTHON, or put it on PYTHONPATH.

Wire format (proto/ntk/v1/request.proto): on TCP every message is preceded by its length
as a base-128 varint -- protobuf's "length-delimited" form, what C++
SerializeDelimitedToOstream and Java writeDelimitedTo produce. The Python runtime of
protobuf 3.21 has no public helper for it, so this module carries its own small varint
writer and reader (encode_varint, decode_varint), below.

Use as a library:

    from ntk_client import Client
    with Client("127.0.0.1", 7420) as c:
        for seq, value in enumerate(values):
            r = c.observe("sensor-1", seq, value)   # an ntk.v1.Response
            print(r.prediction.mean, r.prediction.variance)

or from the shell (one value per line on stdin, "value" or "time,value" with the time in
Unix seconds, no header, '#' for comments; one CSV line per answer on stdout):

    /usr/bin/python3 build/release/examples/protobuf_client/python/ntk_client.py \
        --connect 127.0.0.1:7420 --key sensor-1 < values.txt

Exit status: 0; 1 when ntkd answers an Error or cannot be reached; 2 for a bad command
line or input line (the values before it are sent and answered first).
"""

import argparse
import collections
import math
import os
import select
import socket
import sys
import time


def _import_generated(proto_path=None):
    """Imports the generated ntk.v1 modules, from proto_path or NTK_PROTO_PYTHON if given."""
    for path in (proto_path, os.environ.get("NTK_PROTO_PYTHON")):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    global request_pb2, response_pb2, config_pb2
    from ntk.v1 import config_pb2, request_pb2, response_pb2  # noqa: F401


request_pb2 = response_pb2 = config_pb2 = None

# ---- varints ---------------------------------------------------------------------------
# Protobuf's base-128 varint: 7 bits per byte, least significant group first, the high bit
# set on every byte but the last. A 64-bit value takes at most 10 bytes.

MAX_VARINT_BYTES = 10


def encode_varint(value):
    """The varint encoding of a non-negative integer below 2**64, as bytes."""
    if value < 0 or value >= 1 << 64:
        raise ValueError("varint out of range: %r" % (value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf, pos=0):
    """Reads a varint from buf at pos. Returns (value, next_pos), or None when buf ends
    before the varint does. Raises ValueError for a varint longer than 10 bytes or above
    2**64 - 1 (the stream cannot be read further)."""
    value = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            return None
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if value >= 1 << 64:
                raise ValueError("varint above 2**64 - 1")
            return value, pos + i + 1
        shift += 7
    raise ValueError("varint longer than %d bytes" % MAX_VARINT_BYTES)


def write_delimited(sock_or_file, message):
    """Writes varint(length) + message (to a socket or a binary file)."""
    data = message.SerializeToString()
    frame = encode_varint(len(data)) + data
    if hasattr(sock_or_file, "sendall"):
        sock_or_file.sendall(frame)
    else:
        sock_or_file.write(frame)


class FrameReader:
    """Splits a byte stream into length-delimited frames (handles any chunking)."""

    def __init__(self, max_frame_bytes=64 << 20):
        self._buf = bytearray()
        self._max = max_frame_bytes

    def feed(self, data):
        self._buf += data

    def next_frame(self):
        """The next complete frame's bytes, or None if more bytes are needed."""
        head = decode_varint(self._buf, 0)
        if head is None:
            return None
        length, start = head
        if length > self._max:
            raise ValueError("frame of %d bytes above the limit %d" % (length, self._max))
        if len(self._buf) - start < length:
            return None
        frame = bytes(self._buf[start:start + length])
        del self._buf[:start + length]
        return frame

    def pending_bytes(self):
        return len(self._buf)


# ---- the client ------------------------------------------------------------------------


class ProtocolError(ConnectionError):
    """The server's answers cannot be read or matched to the requests (the connection is
    closed)."""


class Client:
    """A blocking connection to ntkd. Answers come in request order: the n-th Response
    read answers the n-th Request sent, so requests may be pipelined (send several, then
    receive as many). A Response echoes its request's seq (one without a seq answers any
    request: the server could not parse it). A response stream that cannot be read (an
    oversized frame, bytes that are not a Response) or matched (a Response carrying
    another seq) raises ProtocolError and closes the connection: the answers after it
    could not be matched either."""

    def __init__(self, host="127.0.0.1", port=7420, timeout=30.0, proto_path=None):
        if request_pb2 is None:
            _import_generated(proto_path)
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = FrameReader()
        self._expected = collections.deque()  # the seqs (None: none) of the requests sent
        self._failure = None  # the ProtocolError that ended the connection

    @property
    def pending(self):
        """Requests sent and not yet received."""
        return len(self._expected)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._sock.close()

    def send(self, request):
        write_delimited(self._sock, request)
        self._expected.append(request.seq if request.HasField("seq") else None)

    def receive(self):
        """The next ntk.v1.Response (blocks; socket.timeout after the timeout)."""
        if self.pending == 0:
            raise RuntimeError("receive() with no request pending")
        if self._failure is not None:
            raise self._failure
        while True:
            try:
                frame = self._reader.next_frame()
            except ValueError as e:  # a bad length prefix, a frame above the limit
                self._fail(str(e))
            if frame is None:
                data = self._sock.recv(65536)
                if not data:
                    raise ConnectionError("ntkd closed the connection")
                self._reader.feed(data)
                continue
            response = response_pb2.Response()
            try:
                response.ParseFromString(frame)
            except Exception as e:
                self._fail("a frame that is not a Response: %s" % e)
            expected = self._expected[0]
            if response.HasField("seq") and response.seq != expected:
                self._fail("response seq %d does not answer the request %s" % (
                    response.seq, "without a seq" if expected is None
                    else "with seq %d" % expected))
            self._expected.popleft()
            return response

    def _fail(self, message):
        # The stream is over: this and every later receive() raise the same error, and
        # the frames already read are dropped (they could not be matched either).
        self._failure = ProtocolError(message)
        self._reader = FrameReader()
        self.close()
        raise self._failure

    def call(self, request):
        self.send(request)
        return self.receive()

    # Conveniences for the common requests.

    @staticmethod
    def reading(key, seq, value=None, time_unix_nano=0):
        """A SensorReading request (value None: a missing measurement)."""
        r = request_pb2.Request()
        r.seq = seq
        r.sensor_reading.sensor_id = key
        r.sensor_reading.time_unix_nano = time_unix_nano
        if value is not None:
            r.sensor_reading.value = value
        return r

    def observe(self, key, seq, value=None, time_unix_nano=0):
        return self.call(self.reading(key, seq, value, time_unix_nano))

    def stats(self, key=None, key_prefix=""):
        r = request_pb2.Request()
        if key is not None:
            r.control.stats.key = key
        else:
            r.control.stats.key_prefix = key_prefix
        return self.call(r)

    def snapshot(self):
        r = request_pb2.Request()
        r.control.snapshot.SetInParent()
        return self.call(r)

    def configure(self, key, lags=None, budget=None, kernel=None):
        r = request_pb2.Request()
        r.control.configure.key = key
        series = r.control.configure.config.series
        series.SetInParent()
        if lags is not None:
            series.lags = lags
        if budget is not None:
            series.model.budget = budget
        if kernel is not None:
            series.model.kernel.spec = kernel
        return self.call(r)


def _status_name(prediction):
    names = {1: "scored", 2: "warming_up", 3: "missing", 4: "unlabelled"}
    return names.get(prediction.status, "unknown")


def _lines(f):
    """The lines of the text file f as they come, each with whether more input is ready
    (lines already read, or bytes waiting in f): while it is, answers can wait for a full
    window; when it is not (a live source, e.g. a pipe from a sensor), they cannot."""
    try:
        fd = f.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file: no waiting to avoid
        for line in f:
            yield line, True
        return
    rest = b""
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            break
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for i, line in enumerate(lines):
            more = i + 1 < len(lines) or bool(select.select([fd], [], [], 0)[0])
            yield line.decode(), more
    if rest:
        yield rest.decode(), False


def _fmt(message, field):
    """A float field in the shortest form that reads back exactly ('' when absent)."""
    return repr(getattr(message, field)) if message.HasField(field) else ""


def _parse_line(line):
    """(time_unix_nano, value or None for a missing one) of an input line, "value" or
    "time,value" with the time in Unix seconds. ValueError says what is wrong."""
    t_text, comma, v_text = line.partition(",")
    if not comma:
        t_text, v_text = "", t_text
    t_text, v_text = t_text.strip(), v_text.strip()
    t_ns = 0
    if t_text:
        try:
            t = float(t_text)
        except ValueError:
            t = None
        if t is None or not 0 <= t <= 1.8e10:
            raise ValueError("bad time '%s' (Unix seconds expected)" % t_text)
        t_ns = int(round(t * 1e9))
    if v_text in ("", "NA", "NaN", "nan"):
        return t_ns, None
    try:
        return t_ns, float(v_text)
    except ValueError:
        raise ValueError("bad value '%s'" % v_text) from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connect", default="127.0.0.1:7420", help="ntkd's HOST:PORT")
    p.add_argument("--key", required=True, help="the stream key")
    p.add_argument("--start-seq", type=int, default=0)
    p.add_argument("--proto-path", help="directory holding the generated ntk/v1/*_pb2.py")
    p.add_argument("--window", type=int, default=256, help="requests in flight at most")
    args = p.parse_args(argv)  # a bad command line: exit 2 with the usage
    host, colon, port = args.connect.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        p.error("--connect: expected HOST:PORT, got '%s'" % args.connect)
    if args.window < 1:
        p.error("--window: expected at least 1, got %d" % args.window)
    _import_generated(args.proto_path)

    def fail(status, message):
        print("ntk_client.py: %s" % message, file=sys.stderr)
        return status

    try:
        c = Client(host.strip("[]"), int(port))
    except OSError as e:
        return fail(1, "cannot connect to %s: %s" % (args.connect, e))
    with c:
        print("seq,key,status,value,mean,sd,z,anomaly", flush=True)
        status = 0

        def answer():
            nonlocal status
            r = c.receive()
            if r.HasField("error"):
                print("%d,%s,error:%s,,,,," % (r.seq, r.key,
                                                response_pb2.ErrorCode.Name(r.error.code)))
                status = 1
                return
            pr = r.prediction
            sd = repr(math.sqrt(pr.variance)) if pr.HasField("variance") else ""
            print("%d,%s,%s,%s,%s,%s,%s,%d" % (r.seq, r.key, _status_name(pr),
                                               _fmt(pr, "value"), _fmt(pr, "mean"), sd,
                                               _fmt(pr, "z"), 1 if pr.anomaly else 0))

        def drain():
            while c.pending:
                answer()
            sys.stdout.flush()

        seq = args.start_seq
        try:
            for line_no, (line, more) in enumerate(_lines(sys.stdin), 1):
                line = line.strip()
                if line.startswith("#"):
                    if not more:
                        drain()
                    continue
                try:
                    t_ns, value = _parse_line(line)
                except ValueError as e:
                    # A bad line ends the run; what came before it is answered first.
                    drain()
                    return fail(2, "line %d: %s" % (line_no, e))
                c.send(Client.reading(args.key, seq, value, t_ns))
                seq += 1
                while c.pending >= args.window:
                    answer()
                # When no more input is ready (a live source), the answers so far are read
                # and printed now, not when the window fills.
                if not more:
                    drain()
            drain()
        except OSError as e:  # the connection failed or timed out midway
            return fail(1, "%s: %s" % (args.connect, e))
        return status


if __name__ == "__main__":
    sys.exit(main())
