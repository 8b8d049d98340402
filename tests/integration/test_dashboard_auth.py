"""The dashboard's access rules (`dashboard.auth.Guard`), stepped directly: the whole table, and properties
over any request hypothesis makes up. No server, no cluster."""

from __future__ import annotations

from hypothesis import given, strategies as st

from p2pcompute.dashboard.auth import Guard, is_loopback

TOKEN = "s3cret-token"
LOOPBACK = ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"]
REMOTE = ["192.0.2.2", "10.0.0.5", "::ffff:10.0.0.5", "2001:db8::1", "not-an-ip"]


def decide(guard, ip, token=None, session=None, write=False, host="127.0.0.1:8265"):
    return guard.decide(client_ip=ip, host_header=host, token=token, session=session, write=write)


def test_the_table():
    g = Guard(TOKEN)
    sid = g.sessions.new()
    for ip in LOOPBACK:
        assert is_loopback(ip)
        assert decide(g, ip).allowed                                   # local read
        assert decide(g, ip, host="localhost").allowed
        assert decide(g, ip, host="[::1]:8265").allowed
        assert decide(g, ip, host="evil.example:8265").status == 403    # DNS rebinding
        assert decide(g, ip, write=True).status == 401                  # writes need the token, even here
        assert decide(g, ip, token=TOKEN, write=True).allowed
        assert decide(g, ip, session=sid, write=True).allowed
    for ip in REMOTE:
        assert not is_loopback(ip)
        assert decide(g, ip).status == 401
        assert decide(g, ip, token=TOKEN).allowed
        assert decide(g, ip, session=sid).allowed
        assert decide(g, ip, token=TOKEN, write=True).allowed
    embedded = Guard(None)  # no token: loopback reads only, never writes
    assert decide(embedded, "127.0.0.1").allowed
    assert decide(embedded, "192.0.2.2").status == 401
    assert decide(embedded, "127.0.0.1", token="", write=True).status == 401
    assert decide(embedded, "127.0.0.1", session=None, write=True).status == 403


requests = st.fixed_dictionaries({
    "ip": st.sampled_from(LOOPBACK + REMOTE), "write": st.booleans(),
    "token": st.none() | st.text(max_size=20) | st.just(TOKEN),
    "session": st.none() | st.text(max_size=20), "host": st.none() | st.sampled_from(
        ["127.0.0.1:8265", "localhost", "evil.example", "[::1]:1", "10.0.0.5:8265"])})


@given(requests)
def test_no_credential_no_access_from_elsewhere_and_no_writes(req):
    g = Guard(TOKEN)
    d = g.decide(client_ip=req["ip"], host_header=req["host"], token=req["token"], session=req["session"],
                 write=req["write"])
    right_token = req["token"] == TOKEN
    # sessions hypothesis invents are never valid: only the token can authenticate here
    if d.allowed:
        assert right_token or (req["token"] is None and req["session"] is None and not req["write"]
                               and is_loopback(req["ip"]))
    if req["token"] is not None and not right_token:
        assert not d.allowed and d.status == 401
    if req["write"] and not right_token:
        assert not d.allowed
    if not is_loopback(req["ip"]) and not right_token:
        assert not d.allowed
