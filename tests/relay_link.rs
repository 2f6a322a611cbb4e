//! `twinfs relay` on its own, between two sockets of the test: bytes arrive
//! intact and in order, no earlier than the delay says; a bandwidth limit
//! holds; a partition (one way or both) holds bytes until `heal` and then
//! delivers them; a reset closes both ends; a stall (loss) costs 200 ms.

mod faults_common;
mod mirror_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use faults_common::Relay;
use mirror_common::{pattern, scratch};

/// A server socket and a client socket joined through a relay.
struct Joined {
    relay: Relay,
    client: TcpStream,
    server: TcpStream,
    /// Where the relay connects to (kept open for later connections).
    listener: TcpListener,
    _dir: tempfile::TempDir,
}

fn joined(extra: &[&str]) -> Joined {
    let dir = scratch();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let to = listener.local_addr().expect("addr").to_string();
    let mut relay = Relay::start(&to, extra, &dir.path().join("relay.log"));
    let client = TcpStream::connect(&relay.addr).expect("connect to the relay");
    let (server, _) = listener.accept().expect("the relay connects on");
    for s in [&client, &server] {
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
    }
    relay.wait_connection(Duration::from_secs(10));
    Joined {
        relay,
        client,
        server,
        listener,
        _dir: dir,
    }
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read");
    buf
}

/// Whether anything arrives on `s` within `wait`.
fn arrives_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut b = [0u8; 1];
    let got = matches!(s.read(&mut b), Ok(n) if n > 0);
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    got
}

#[test]
fn bytes_arrive_intact_in_order_and_no_earlier_than_the_delay() {
    let mut j = joined(&["--delay", "40", "--jitter", "10", "--seed", "7"]);
    // Many writes of odd sizes, with jitter: still one intact stream.
    let data = pattern(3 << 20, 5);
    let writer = {
        let mut c = j.client.try_clone().expect("clone");
        let data = data.clone();
        std::thread::spawn(move || {
            for piece in data.chunks(77_777) {
                c.write_all(piece).expect("write");
            }
        })
    };
    let got = read_exactly(&mut j.server, data.len());
    writer.join().expect("writer");
    assert!(got == data, "the relayed bytes differ from those sent");
    // Round trips: at least twice the one-way delay.
    for _ in 0..5 {
        let t = Instant::now();
        j.client.write_all(b"p").expect("ping");
        assert_eq!(read_exactly(&mut j.server, 1), b"p");
        j.server.write_all(b"q").expect("pong");
        assert_eq!(read_exactly(&mut j.client, 1), b"q");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(80), "round trip {rtt:?}");
    }
    let st = j.relay.stats();
    assert_eq!(st["forward_bytes"], data.len() as u64 + 5, "{st}");
    assert_eq!(st["reverse_bytes"], 5, "{st}");
}

#[test]
fn a_rate_limit_holds_and_a_stall_costs_a_retransmission_timeout() {
    let mut j = joined(&["--rate", "1M"]);
    let data = pattern(2 << 20, 9);
    let t = Instant::now();
    let writer = {
        let mut c = j.client.try_clone().expect("clone");
        let data = data.clone();
        std::thread::spawn(move || c.write_all(&data).expect("write"))
    };
    let got = read_exactly(&mut j.server, data.len());
    writer.join().expect("writer");
    let took = t.elapsed();
    assert!(got == data);
    assert!(
        took >= Duration::from_millis(1800),
        "2 MiB at 1 MiB/s took only {took:?}"
    );
    j.relay.cmd("rate off");
    j.relay.cmd("loss 1");
    let t = Instant::now();
    for _ in 0..3 {
        j.client.write_all(b"x").expect("write");
        assert_eq!(read_exactly(&mut j.server, 1), b"x");
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "three lost chunks cost only {took:?}"
    );
    assert_eq!(j.relay.stats()["stalls"], 3);
}

#[test]
fn a_partition_holds_bytes_one_way_or_both_until_it_heals() {
    let mut j = joined(&[]);
    // One way: forward blocked, reverse open.
    j.relay.cmd("partition forward");
    j.client.write_all(b"held").expect("write");
    j.server.write_all(b"open").expect("write");
    assert_eq!(read_exactly(&mut j.client, 4), b"open");
    assert!(
        !arrives_within(&mut j.server, Duration::from_millis(700)),
        "bytes crossed a forward partition"
    );
    j.relay.cmd("heal");
    assert_eq!(read_exactly(&mut j.server, 4), b"held");
    // Both ways.
    j.relay.cmd("partition both");
    j.client.write_all(b"a").expect("write");
    j.server.write_all(b"b").expect("write");
    assert!(!arrives_within(&mut j.server, Duration::from_millis(500)));
    assert!(!arrives_within(&mut j.client, Duration::from_millis(500)));
    // A new connection during the partition is held, not joined.
    let mut late = TcpStream::connect(&j.relay.addr).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(j.relay.stats()["held_connections"], 1);
    j.relay.cmd("heal");
    assert_eq!(read_exactly(&mut j.server, 1), b"a");
    assert_eq!(read_exactly(&mut j.client, 1), b"b");
    assert_eq!(j.relay.stats()["partitions"], 2);
    // Healed, the held connection is joined to the target.
    let (mut late_server, _) = j.listener.accept().expect("the held connection arrives");
    late.write_all(b"late").expect("write");
    late_server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    assert_eq!(read_exactly(&mut late_server, 4), b"late");
}

#[test]
fn a_reset_closes_both_ends() {
    let mut j = joined(&[]);
    j.client.write_all(b"before").expect("write");
    assert_eq!(read_exactly(&mut j.server, 6), b"before");
    assert_eq!(j.relay.cmd("reset"), "1");
    let mut buf = [0u8; 16];
    for (name, s) in [("client", &mut j.client), ("server", &mut j.server)] {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("the {name} read {n} bytes after a reset"),
        }
    }
    let st = j.relay.stats();
    assert_eq!(st["resets"], 1, "{st}");
    wait_active_zero(&mut j.relay);
}

fn wait_active_zero(relay: &mut Relay) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.stats()["active"] != 0 {
        assert!(Instant::now() < deadline, "the reset connection stays");
        std::thread::sleep(Duration::from_millis(20));
    }
}
