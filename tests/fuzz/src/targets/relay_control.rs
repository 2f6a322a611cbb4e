//! The relay's control port (`replicate/src/relay.rs`, `twinfs relay`):
//! the input is what a client sends, one command per line, run through
//! `Control::execute` of a relay bound on loopback (it accepts nothing:
//! no connection is made). Checked against a model of the command table
//! in `Control::execute`'s documentation: every reply starts with `ok` or
//! `error:`; a command succeeds exactly when the model says it is valid
//! (numbers that parse, delays up to `MAX_DELAY`, probabilities in 0..=1,
//! rates above zero that fit in 64 bits with their K, M, G suffix); the
//! configuration, the blocked directions and the partition counter
//! follow the model after every line, and a refused command changes
//! nothing; `show` and `stats` answer JSON that says so.

use std::time::Duration;

use twinfs_replicate::relay::{Control, LinkConfig, Relay, MAX_DELAY};

thread_local! {
    /// One relay's control per thread, bound once (binding a socket per run
    /// would dominate); every run starts with `clear`. The relay itself and
    /// its runtime are dropped at once: commands need neither.
    static CONTROL: Control = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime with I/O");
        let relay = rt
            .block_on(Relay::bind(
                "127.0.0.1:0",
                "127.0.0.1:9",
                LinkConfig::default(),
                0,
                1,
            ))
            .expect("a loopback listener");
        relay.control()
    };
}

/// The model's link.
#[derive(Default)]
struct Model {
    cfg: LinkConfig,
    forward: bool,
    reverse: bool,
    partitions: u64,
}

/// Entry point.
pub fn run(data: &[u8]) {
    CONTROL.with(|control| {
        assert_eq!(control.execute("clear"), "ok");
        let mut model = Model {
            partitions: partitions(control),
            ..Model::default()
        };
        // As the control port reads them: lines, without "\n" or "\r\n";
        // one that is not UTF-8 ends the connection.
        for line in data.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Ok(line) = std::str::from_utf8(line) else {
                return;
            };
            let reply = control.execute(line);
            let want = expect(&mut model, line);
            check(control, &model, line, &reply, want);
        }
    });
}

fn partitions(control: &Control) -> u64 {
    control.stats().json()["partitions"]
        .as_u64()
        .expect("a counter")
}

/// What the model expects of `line`: `Ok(Some(json))` for a reply that is
/// JSON, `Ok(None)` for a plain `ok`, `Err(())` for a refusal. Moves the
/// model along.
fn expect(m: &mut Model, line: &str) -> Result<Option<Reply>, ()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut cfg = m.cfg.clone();
    match words.as_slice() {
        ["delay", d] => cfg.delay = millis(d)?,
        ["delay", d, j] => {
            cfg.delay = millis(d)?;
            cfg.jitter = millis(j)?;
        }
        ["rate", "off"] => cfg.rate_bytes_per_sec = None,
        ["rate", r] => cfg.rate_bytes_per_sec = Some(rate(r)?),
        ["loss", p] => cfg.loss = probability(p)?,
        ["cut", p] => cfg.cut = probability(p)?,
        ["partition", way] => {
            let (f, r) = match *way {
                "forward" => (true, false),
                "reverse" => (false, true),
                "both" => (true, true),
                _ => return Err(()),
            };
            if (f && !m.forward) || (r && !m.reverse) {
                m.partitions += 1;
            }
            m.forward |= f;
            m.reverse |= r;
            return Ok(None);
        }
        ["heal"] => {
            (m.forward, m.reverse) = (false, false);
            return Ok(None);
        }
        ["reset"] => return Ok(Some(Reply::Count)),
        ["clear"] => {
            (m.forward, m.reverse) = (false, false);
            cfg = LinkConfig::default();
        }
        ["show"] => return Ok(Some(Reply::Show)),
        ["stats"] => return Ok(Some(Reply::Stats)),
        _ => return Err(()),
    }
    if cfg.delay > MAX_DELAY || cfg.jitter > MAX_DELAY {
        return Err(());
    }
    m.cfg = cfg;
    Ok(None)
}

/// A reply with a value.
enum Reply {
    /// `reset`: how many connections (none: the relay accepts nothing).
    Count,
    Show,
    Stats,
}

fn millis(w: &str) -> Result<Duration, ()> {
    w.parse::<u64>().map(Duration::from_millis).map_err(drop)
}

fn probability(w: &str) -> Result<f64, ()> {
    let p = w.parse::<f64>().map_err(drop)?;
    (0.0..=1.0).contains(&p).then_some(p).ok_or(())
}

/// Bytes per second: digits, then K, M or G (either case, powers of 1024).
fn rate(w: &str) -> Result<u64, ()> {
    let (digits, unit) = match w.as_bytes().last() {
        Some(b'K' | b'k') => (&w[..w.len() - 1], 1u128 << 10),
        Some(b'M' | b'm') => (&w[..w.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&w[..w.len() - 1], 1 << 30),
        _ => (w, 1),
    };
    let n = digits.parse::<u64>().map_err(drop)?;
    let bytes = u128::from(n) * unit;
    if bytes == 0 || bytes > u128::from(u64::MAX) {
        return Err(());
    }
    Ok(bytes as u64)
}

fn check(control: &Control, m: &Model, line: &str, reply: &str, want: Result<Option<Reply>, ()>) {
    let json = |r: &str| -> serde_json::Value {
        let body = r.strip_prefix("ok ").expect("a reply with a value");
        serde_json::from_str(body).expect("the reply is JSON")
    };
    match want {
        Err(()) => assert!(
            reply.starts_with("error: "),
            "{line:?} was taken: {reply:?}"
        ),
        Ok(None) => assert_eq!(reply, "ok", "{line:?}"),
        Ok(Some(Reply::Count)) => assert_eq!(reply, "ok 0", "{line:?}"),
        Ok(Some(Reply::Show)) => assert_eq!(json(reply), show(m), "{line:?}"),
        Ok(Some(Reply::Stats)) => {
            assert_eq!(json(reply)["partitions"].as_u64(), Some(m.partitions));
        }
    }
    assert_eq!(control.config(), m.cfg, "after {line:?} ({reply:?})");
    assert_eq!(control.show(), show(m), "after {line:?} ({reply:?})");
    assert_eq!(partitions(control), m.partitions, "after {line:?}");
}

fn show(m: &Model) -> serde_json::Value {
    serde_json::json!({
        "delay_ms": m.cfg.delay.as_millis() as u64,
        "jitter_ms": m.cfg.jitter.as_millis() as u64,
        "rate_bytes_per_sec": m.cfg.rate_bytes_per_sec,
        "loss": m.cfg.loss,
        "cut": m.cfg.cut,
        "blocked_forward": m.forward,
        "blocked_reverse": m.reverse,
    })
}
