//! The rate limiter's algorithm, in process (`Gcra`) and as its Lua script
//! on a real Redis or Valkey, through the same cases
//! (`tests/fixtures/gcra-cases.json`): both must agree.

use std::time::Duration;

use cognito_facade::test_support::{Gcra, Params, SCRIPT, ScriptOp, Turn};

use crate::servers::Redis;

#[derive(Debug, serde::Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Debug, serde::Deserialize)]
struct Case {
    name: String,
    limit: f64,
    burst: f64,
    /// The longest wait any caller is given (1000 ms unless said).
    queue_timeout_ms: Option<u64>,
    /// The stored state the case starts from.
    state: Option<State>,
    steps: Vec<Step>,
}

/// A limiter's stored state, relative to the clock at the case's start.
#[derive(Debug, serde::Deserialize)]
struct State {
    tat_ahead_ms: Option<f64>,
    rate: Option<f64>,
    at_ahead_ms: Option<f64>,
}

impl State {
    /// The state as stored when the clock reads `now` (µs).
    fn at(&self, now: f64) -> (Option<f64>, Option<(f64, f64)>) {
        let tat = self.tat_ahead_ms.map(|ms| now + ms * 1000.0);
        let decreased = self
            .rate
            .map(|rate| (rate, now + self.at_ahead_ms.unwrap_or(0.0) * 1000.0));
        (tat, decreased)
    }
}

#[derive(Debug, serde::Deserialize)]
struct Step {
    at_ms: u64,
    max_wait_ms: Option<u64>,
    go_ms: Option<f64>,
    refused_ms: Option<f64>,
    #[serde(default)]
    throttle: bool,
    rate: Option<f64>,
    /// Turns another limiter gave, counted in this one.
    spent: Option<u32>,
}

/// What one step saw: a turn after ms, a refusal with a retry-after in ms,
/// or the rate after a throttle.
#[derive(Debug, Clone, Copy)]
enum Seen {
    Go(f64),
    Refused(f64),
    Rate(f64),
    Spent,
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gcra-cases.json"
    );
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.cases.len() >= 8);
    cases.cases
}

fn params(case: &Case) -> Params {
    Params {
        burst: case.burst,
        horizon: Duration::from_millis(case.queue_timeout_ms.unwrap_or(1000)),
        ..Params::for_limit(case.limit)
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Checks what each step saw against the case, within `slack_ms` for times
/// (and a twentieth for rates).
fn check(case: &Case, seen: &[Seen], slack_ms: f64, what: &str) {
    for (i, (step, seen)) in case.steps.iter().zip(seen).enumerate() {
        let near = |a: f64, b: f64| (a - b).abs() <= slack_ms;
        let ok = match (*seen, step.go_ms, step.refused_ms, step.rate) {
            (Seen::Go(at), Some(expected), None, None) => near(at, expected),
            (Seen::Refused(after), None, Some(expected), None) => near(after, expected),
            (Seen::Rate(rate), None, None, Some(expected)) => (rate - expected).abs() <= 0.05,
            (Seen::Spent, None, None, None) => step.spent.is_some(),
            _ => false,
        };
        assert!(
            ok,
            "{what}, case {:?}, step {i} {step:?}: saw {seen:?}",
            case.name
        );
    }
}

/// The in-process limiter on a virtual clock (microseconds since the epoch,
/// as Redis's clock reads).
fn run_in_process(case: &Case) -> Vec<Seen> {
    let params = params(case);
    let start = 1_764_000_000_000_000.0;
    let mut gcra = match &case.state {
        Some(state) => {
            let (tat, decreased) = state.at(start);
            Gcra::from_state(tat.unwrap_or(0.0), decreased)
        }
        None => Gcra::default(),
    };
    case.steps
        .iter()
        .map(|step| {
            let now = start + step.at_ms as f64 * 1000.0;
            if step.throttle {
                gcra.throttled(now, &params);
                return Seen::Rate(gcra.rate(now, &params));
            }
            if let Some(turns) = step.spent {
                gcra.spent(now, turns, &params);
                return Seen::Spent;
            }
            let max_wait = Duration::from_millis(step.max_wait_ms.unwrap());
            match gcra.take(now, max_wait, &params) {
                Turn::Go(wait) => Seen::Go(ms(wait)),
                Turn::Refused(after) => Seen::Refused(ms(after)),
            }
        })
        .collect()
}

/// The script on a real Redis, in real time: each step a few ms after its
/// time, and each wait bound 10 ms longer (less than any refusal the cases
/// expect), so a turn due exactly then, give or take the clock, has come.
async fn run_on_redis(case: &Case, redis: &Redis) -> Vec<Seen> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(SCRIPT);
    let params = params(case);
    let key = format!("gcra-case:{}", case.name);
    if let Some(state) = &case.state {
        let (secs, micros): (String, String) =
            redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        let now = secs.parse::<f64>().unwrap() * 1e6 + micros.parse::<f64>().unwrap();
        let (tat, decreased) = state.at(now);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        if let Some(tat) = tat {
            hset.arg("tat").arg(format!("{tat:.0}"));
        }
        if let Some((rate, at)) = decreased {
            hset.arg("rate")
                .arg(rate.to_string())
                .arg("at")
                .arg(format!("{at:.0}"));
        } else if let Some(at) = state.at_ahead_ms {
            // A decrease's time without its rate, as a hand-written hash may
            // hold it (the in-process limiter cannot hold one).
            hset.arg("at").arg(format!("{:.0}", now + at * 1000.0));
        }
        let _: i64 = hset.query_async(&mut conn).await.unwrap();
    }
    let start = tokio::time::Instant::now();
    let mut seen = Vec::new();
    for step in &case.steps {
        tokio::time::sleep_until(start + Duration::from_millis(step.at_ms + 3)).await;
        let op = match (step.throttle, step.spent) {
            (true, _) => ScriptOp::Throttle,
            (false, Some(turns)) => ScriptOp::Spent(turns),
            (false, None) => ScriptOp::Take(Duration::from_millis(step.max_wait_ms.unwrap() + 10)),
        };
        let reply: Vec<i64> = script
            .key(&key)
            .arg(params.script_args(op))
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let after = reply[1] as f64 / 1000.0;
        seen.push(match reply[0] {
            2 => Seen::Rate(reply[2] as f64 / 1000.0),
            3 => Seen::Spent,
            1 => Seen::Go(after),
            _ => Seen::Refused(after),
        });
    }
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "{key} has no TTL: {ttl}");
    seen
}

#[tokio::test]
async fn the_script_and_the_in_process_limiter_pass_the_same_cases() {
    let redis = Redis::start(&[]);
    for case in cases() {
        check(&case, &run_in_process(&case), 0.001, "in process");
        check(&case, &run_on_redis(&case, &redis).await, 20.0, "on Redis");
    }
}
