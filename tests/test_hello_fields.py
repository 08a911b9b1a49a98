"""What the cloud does with the Hello's announcements, without a server: digests are checked
as hex, capabilities kept, and the base model followed from the frames' layer headers."""

from __future__ import annotations

from cloud_decoder.edge_link import hello_problem
from cloud_decoder.sessions import EdgeSession
from icm_rpc import pb

DIGEST = "0123456789abcdef" * 4          # a package digest (hex of 32 bytes)


def test_digests_must_be_lowercase_hex() -> None:
    assert hello_problem(pb.Hello(camera_id="c", base_model_digest=DIGEST)) is None
    assert hello_problem(pb.Hello(camera_id="c")) is None          # none announced
    for name in ("base_model_digest", "enhancement_model_digest"):
        for bad in ("xyz", DIGEST.upper(), "01 23"):
            problem = hello_problem(pb.Hello(camera_id="c", **{name: bad}))
            assert problem and name in problem and "hex" in problem


def test_session_keeps_the_capabilities() -> None:
    s = EdgeSession(pb.Hello(camera_id="c", capabilities=["heartbeat", "settings.max_fps"]),
                    "peer", heartbeat_s=2.0)
    assert s.capabilities == {"heartbeat", "settings.max_fps"} and s.heartbeat_s == 2.0
    quiet = EdgeSession(pb.Hello(camera_id="c"), "peer", heartbeat_s=2.0)
    assert quiet.capabilities == frozenset() and quiet.heartbeat_s == 0.0


def test_session_follows_the_base_model_of_the_frames() -> None:
    s = EdgeSession(pb.Hello(camera_id="c", base_model_id="base-a", base_model_digest=DIGEST),
                    "peer")
    # the header carries the digest's first 16 bytes: the announced model, nothing to say
    assert not s.note_base("base-a", DIGEST[:32])
    assert (s.base_model_id, s.base_digest) == ("base-a", DIGEST)
    # another model (a switch): said once, then followed
    other = "f" * 32
    assert s.note_base("base-b", other)
    assert (s.base_model_id, s.base_digest) == ("base-b", other)
    assert not s.note_base("base-b", other)
    # an edge that announced no digest: the first frame tells, without a complaint
    blank = EdgeSession(pb.Hello(camera_id="c"), "peer")
    assert not blank.note_base("base-a", DIGEST[:32]) and blank.base_model_id == "base-a"
