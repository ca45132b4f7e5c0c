//! The benchmark's load generator (`cargo run --release --example loadgen`):
//! drives one target at a fixed concurrency for a fixed time, prints
//! `measuring` and `measured` at the edges of the measured window (after a
//! warm-up), then one JSON line with the throughput and latency percentiles.
//!
//! Targets (`--mode`):
//! - `health`: grpc.health.v1 Check on the service (the gRPC floor);
//! - `facade`: GetUserAuthFactors through the service, every call with a
//!   distinct token so single flight cannot flatter it;
//! - `sdk`: GetUserAuthFactors straight to the stand-in through the AWS SDK
//!   with the service's own client settings (the SDK floor);
//! - `startup`: starts the service binary and reports the time to SERVING;
//! - `mint`: makes an RSA signing key and writes its JWKS and signed
//!   Cognito-shaped access tokens to `--target` (a directory), for the token
//!   verification figures: `valid.txt` (distinct valid tokens), `refused.txt`
//!   (forged ones) and `mix.txt` (85% valid tokens of 200 users, 10% expired,
//!   5% forged or of another pool).
//! - `hold`: opens `--connections` HTTP/2 connections, each with
//!   `--concurrency` Checks whose message announces 1 MB and which never
//!   end (`bench/unfinished.rs`), waits until the service takes no more,
//!   prints what it did to them, and holds them for `--seconds`.

use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};

#[path = "unfinished.rs"]
mod unfinished;
use cognito_facade::{
    app,
    config::UpstreamConfig,
    proto::{
        GetUserAuthFactorsRequest, identity_provider_service_client::IdentityProviderServiceClient,
    },
    test_support::{Caller, Cognito, extract},
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Health,
    Facade,
    Sdk,
    Startup,
    Mint,
    Follow,
    Hold,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// The service (`health`, `facade`) or the stand-in (`sdk`), as a URL.
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds of measured load (after a short warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// `facade`: draw every call's token from a pool of this many (a
    /// realistic mix, where single flight and the cache can help) instead of
    /// a fresh token per call.
    #[arg(long)]
    tokens: Option<u64>,
    /// Calls per second over all workers (open loop, for the soak): each
    /// worker starts a call every `concurrency / rate` seconds instead of as
    /// soon as its last one returned.
    #[arg(long)]
    rate: Option<f64>,
    /// `facade`: draw the tokens from this file (one a line), each caller
    /// walking it at its own stride.
    #[arg(long)]
    tokens_file: Option<std::path::PathBuf>,
    /// `facade`: count calls answered with this gRPC code (e.g.
    /// `Unauthenticated`) as answered, with their latency, not as errors.
    #[arg(long)]
    expect: Option<String>,
    /// Skip the warm-up (to measure first calls, such as the first sight of
    /// each token).
    #[arg(long)]
    no_warmup: bool,
    /// `facade`: after a failed call that carries a `google.rpc.RetryInfo`,
    /// wait as it says (at most a second) before the next, as a good
    /// client does.
    #[arg(long)]
    obey_retry_info: bool,
    /// `facade`: put this before every fresh token, so load generators run
    /// side by side send different ones.
    #[arg(long, default_value = "")]
    token_prefix: String,
    /// `facade`: send this `x-forwarded-client-cert` with every call (a
    /// caller's identity, to a service that trusts the header).
    #[arg(long)]
    xfcc: Option<String>,
    /// `mint`: the user pool the tokens belong to.
    #[arg(long, default_value = "us-east-1_BenchPool")]
    pool: String,
    /// `mint`: how many distinct valid tokens `valid.txt` holds.
    #[arg(long, default_value_t = 2048)]
    valid: usize,
    /// HTTP/2 connections to spread the load over (gRPC modes).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// `follow`: the second replica, whose calls follow the first's flight.
    #[arg(long)]
    follower: Option<String>,
    /// `follow`: how many flights to time.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// `startup`: the service binary and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

/// The service's allocator, so the SDK floor (which runs in this process) is
/// measured under the same allocator as the SDK inside the service.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What each worker measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    /// Failed calls by gRPC code.
    error_codes: BTreeMap<String, u64>,
}

/// On the service's own runtime (`app::runtime`), so the SDK floor is the
/// same client under the same runtime as in the service.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    app::runtime()?.block_on(generate())
}

async fn generate() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.mode == Mode::Startup {
        return startup(&args).await;
    }
    if args.mode == Mode::Mint {
        return mint(&args);
    }
    if args.mode == Mode::Follow {
        return follow(&args).await;
    }
    if args.mode == Mode::Hold {
        return hold(&args).await;
    }
    let channels = connect(&args).await?;
    let cognito = match args.mode {
        Mode::Sdk => Some(Arc::new(
            Cognito::from_config(
                &UpstreamConfig {
                    region: Some("us-east-1".to_owned()),
                    endpoint: Some(args.target.clone()),
                    ..UpstreamConfig::default()
                },
                &Default::default(),
                false,
                None,
            )
            .await?,
        )),
        _ => None,
    };
    // Warm-up: connections, pools and caches settle before measuring.
    if !args.no_warmup {
        run(
            &args,
            &channels,
            cognito.as_ref(),
            Duration::from_secs_f64(args.seconds.min(1.0)),
        )
        .await;
    }
    let measured = Duration::from_secs_f64(args.seconds);
    // Marks the measured window on its own lines, so bench/run.py can read
    // each process's CPU time at its edges.
    println!("measuring");
    let started = Instant::now();
    let tallies = run(&args, &channels, cognito.as_ref(), measured).await;
    let elapsed = started.elapsed().as_secs_f64();
    println!("measured");

    let mut latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let mut error_codes: BTreeMap<&str, u64> = BTreeMap::new();
    for (code, n) in tallies.iter().flat_map(|t| &t.error_codes) {
        *error_codes.entry(code).or_default() += n;
    }
    let error_codes = error_codes
        .iter()
        .map(|(code, n)| format!("\"{code}\":{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let percentile = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    println!(
        "{{\"mode\":\"{:?}\",\"concurrency\":{},\"requests\":{},\"errors\":{},\"error_codes\":{{{}}},\"rps\":{:.1},\"p50_us\":{},\"p99_us\":{}}}",
        args.mode,
        args.concurrency,
        latencies.len(),
        errors,
        error_codes,
        latencies.len() as f64 / elapsed,
        percentile(0.50),
        percentile(0.99)
    );
    Ok(())
}

async fn connect(args: &Args) -> Result<Vec<Channel>, Box<dyn std::error::Error>> {
    if args.mode == Mode::Sdk {
        return Ok(Vec::new());
    }
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Channel::from_shared(args.target.clone())?.connect().await?);
    }
    Ok(channels)
}

/// Runs `concurrency` workers for `duration`; each sends one call after another.
async fn run(
    args: &Args,
    channels: &[Channel],
    cognito: Option<&Arc<Cognito>>,
    duration: Duration,
) -> Vec<Tally> {
    let until = Instant::now() + duration;
    let file_tokens: Arc<Vec<String>> = Arc::new(
        args.tokens_file
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .expect("the tokens file")
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    );
    let expect = args.expect.clone();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|worker| {
            let mode = args.mode;
            let concurrency = args.concurrency.max(1);
            let pool = args.tokens;
            let obey_retry_info = args.obey_retry_info;
            let prefix = args.token_prefix.clone();
            let xfcc = args.xfcc.clone();
            let pace = args
                .rate
                .map(|rate| Duration::from_secs_f64(args.concurrency as f64 / rate.max(0.001)));
            let channel = channels.get(worker % channels.len().max(1)).cloned();
            let cognito = cognito.cloned();
            let file_tokens = Arc::clone(&file_tokens);
            let expect = expect.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut seq = 0u64;
                let mut ticks = pace.map(|pace| {
                    // Workers start spread over one period, not all at once.
                    let start = tokio::time::Instant::now()
                        + pace.mul_f64(worker as f64 / concurrency as f64);
                    let mut ticks = tokio::time::interval_at(start, pace);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    ticks
                });
                while Instant::now() < until {
                    if let Some(ticks) = ticks.as_mut() {
                        ticks.tick().await;
                    }
                    seq += 1;
                    let started = Instant::now();
                    let outcome: Result<(), String> = match mode {
                        Mode::Health => {
                            let mut client = HealthClient::new(channel.clone().expect("a channel"));
                            client
                                .check(HealthCheckRequest {
                                    service: String::new(),
                                })
                                .await
                                .map(drop)
                                .map_err(|status| format!("{:?}", status.code()))
                        }
                        Mode::Facade => {
                            let mut client = IdentityProviderServiceClient::new(
                                channel.clone().expect("a channel"),
                            );
                            let access_token = match pool {
                                _ if !file_tokens.is_empty() => {
                                    // A stride prime to the file's length
                                    // walks all of it, each caller from its
                                    // own start.
                                    let n = file_tokens.len() as u64;
                                    let at = (worker as u64 * 7919 + seq * 104_729) % n;
                                    file_tokens[at as usize].clone()
                                }
                                // Callers walk the pool at different strides,
                                // so identical calls overlap as they would
                                // in production, not in lockstep.
                                Some(size) => {
                                    format!(
                                        "bench.pool.{}",
                                        (seq * (worker as u64 + 1)) % size.max(1)
                                    )
                                }
                                None => format!("bench.{prefix}{worker}.{seq}"),
                            };
                            let mut request =
                                tonic::Request::new(GetUserAuthFactorsRequest { access_token });
                            if let Some(xfcc) = xfcc.as_deref() {
                                let value = xfcc.parse().expect("a valid header value");
                                request
                                    .metadata_mut()
                                    .insert("x-forwarded-client-cert", value);
                            }
                            match client.get_user_auth_factors(request).await {
                                Ok(_) => Ok(()),
                                Err(status) => {
                                    if obey_retry_info {
                                        retry_after(&status).await;
                                    }
                                    let code = code_of(&status);
                                    if expect.as_deref() == Some(code.as_str()) {
                                        Ok(())
                                    } else {
                                        Err(code)
                                    }
                                }
                            }
                        }
                        Mode::Sdk => {
                            let token =
                                extract(&format!("bench.{worker}.{seq}"), &Default::default())
                                    .expect("a valid token");
                            cognito
                                .as_ref()
                                .expect("an SDK client")
                                .get_user_auth_factors(&token, None, None, &Caller::anonymous())
                                .await
                                .map(drop)
                                .map_err(|err| format!("{:?}", err.kind))
                        }
                        Mode::Startup | Mode::Mint | Mode::Follow | Mode::Hold => {
                            unreachable!("handled in main")
                        }
                    };
                    match outcome {
                        Ok(()) => {
                            let us = started.elapsed().as_micros();
                            tally
                                .latencies_us
                                .push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        Err(code) => {
                            tally.errors += 1;
                            *tally.error_codes.entry(code).or_default() += 1;
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut tallies = Vec::new();
    for worker in workers {
        tallies.push(worker.await.expect("a worker"));
    }
    tallies
}

/// Starts the service and polls its health every millisecond until SERVING.
async fn startup(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or("startup needs -- BINARY ARGS")?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = started + Duration::from_secs(10);
    let serving_ms = loop {
        if Instant::now() > deadline {
            return Err("not SERVING within 10 s".into());
        }
        if let Ok(channel) = Channel::from_shared(args.target.clone())?.connect().await {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if status.is_ok_and(|s| s.get_ref().status == 1) {
                break started.elapsed().as_secs_f64() * 1000.0;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // Idle memory once settled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let idle_rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    child.kill().await?;
    println!(
        "{{\"mode\":\"Startup\",\"serving_ms\":{serving_ms:.1},\"idle_rss_kb\":{idle_rss_kb}}}"
    );
    Ok(())
}

/// `mint`: a signing key, its JWKS and tokens; see the module docs.
fn mint(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    use aws_lc_rs::{
        rand::SystemRandom,
        rsa::{KeyPair, KeySize},
        signature::{KeyPair as _, RSA_PKCS1_SHA256},
    };
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use serde_json::json;

    let dir = std::path::PathBuf::from(&args.target);
    std::fs::create_dir_all(&dir)?;
    let key = KeyPair::generate(KeySize::Rsa2048)?;
    let impostor = KeyPair::generate(KeySize::Rsa2048)?;
    let public = key.public_key();
    let jwks = json!({"keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "bench",
        "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
        "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
    }]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string())?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let region = args.pool.split('_').next().unwrap_or_default();
    let rng = SystemRandom::new();
    let sign = |key: &KeyPair, pool: &str, user: usize, expires_in: i64| -> String {
        let header = json!({"kid": "bench", "alg": "RS256"});
        let claims = json!({
            "sub": format!("00000000-0000-4000-8000-{user:012}"),
            "iss": format!("https://cognito-idp.{region}.amazonaws.com/{pool}"),
            "client_id": "benchclient", "token_use": "access",
            "scope": "aws.cognito.signin.user.admin",
            "auth_time": now, "iat": now, "exp": now + expires_in,
            "jti": format!("bench-{user}-{expires_in}"), "username": format!("user{user}"),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut signature)
            .expect("signing");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    };
    let pool = args.pool.as_str();
    let other_pool = format!("{region}_SomebodyElse");
    let lines = |tokens: &[String]| tokens.join("\n") + "\n";

    let valid: Vec<String> = (0..args.valid).map(|u| sign(&key, pool, u, 3600)).collect();
    std::fs::write(dir.join("valid.txt"), lines(&valid))?;
    let forged: Vec<String> = (0..10).map(|u| sign(&impostor, pool, u, 3600)).collect();
    std::fs::write(dir.join("refused.txt"), lines(&forged))?;
    // 2,000 lines: 1,700 valid (200 users), 200 expired (20 users), 100
    // forged or of another pool (10 tokens), interleaved.
    let users: Vec<String> = valid.iter().take(200).cloned().collect();
    let expired: Vec<String> = (0..20).map(|u| sign(&key, pool, 1000 + u, -600)).collect();
    let strangers: Vec<String> = (0..5)
        .map(|u| sign(&key, &other_pool, 2000 + u, 3600))
        .chain(forged.iter().take(5).cloned())
        .collect();
    let mix: Vec<String> = (0..2000)
        .map(|i| match i % 20 {
            0 | 1 => expired[(i / 20) % expired.len()].clone(),
            2 => strangers[(i / 20) % strangers.len()].clone(),
            _ => users[i % users.len()].clone(),
        })
        .collect();
    std::fs::write(dir.join("mix.txt"), lines(&mix))?;
    println!(
        "{{\"mode\":\"Mint\",\"valid\":{},\"mix\":{}}}",
        valid.len(),
        mix.len()
    );
    Ok(())
}

/// `follow`: per flight, a call on `--target` (which leads, for a fresh
/// token), then the same token on `--follower` a moment later (which
/// follows the flight over the fleet store); prints the median and the
/// spread of how long after the leader's answer the follower had it.
async fn follow(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let follower_url = args.follower.clone().ok_or("--follower is required")?;
    let leader = IdentityProviderServiceClient::connect(args.target.clone()).await?;
    let mut follower = IdentityProviderServiceClient::connect(follower_url).await?;
    let run = std::process::id();
    let mut lags_us = Vec::with_capacity(args.trials);
    let mut skipped = 0usize;
    for trial in 0..args.trials {
        let token = format!("bench.follow.{run}.{trial}");
        let request = || GetUserAuthFactorsRequest {
            access_token: token.clone(),
        };
        let mut leading = leader.clone();
        let first = request();
        let lead = tokio::spawn(async move {
            let result = leading.get_user_auth_factors(first).await;
            (result.is_ok(), Instant::now())
        });
        // Long enough for the leader's join to reach Redis first.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let followed = follower.get_user_auth_factors(request()).await;
        let followed_at = Instant::now();
        let (led, led_at) = lead.await?;
        let source = followed
            .as_ref()
            .ok()
            .and_then(|answer| answer.metadata().get("x-cognito-facade-source").cloned());
        if !led {
            return Err(format!("trial {trial}: the leader's call failed").into());
        }
        // A busy machine can let the follower's call arrive after the
        // flight landed (then it leads one of its own): not a lag to time.
        if source.as_ref().is_none_or(|s| s != "fleet_coalesced") {
            skipped += 1;
            continue;
        }
        let lag = followed_at.saturating_duration_since(led_at);
        lags_us.push(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX));
    }
    if lags_us.len() < args.trials / 2 {
        return Err(format!(
            "only {} of {} trials followed a flight",
            lags_us.len(),
            args.trials
        )
        .into());
    }
    lags_us.sort_unstable();
    let at = |q: f64| lags_us[((lags_us.len() - 1) as f64 * q) as usize];
    println!(
        "{}",
        serde_json::json!({"trials": lags_us.len(), "skipped": skipped, "p50_us": at(0.5), "p90_us": at(0.9), "max_us": at(1.0)})
    );
    Ok(())
}

/// Waits as a failed call's `RetryInfo` says, at most a second.
async fn retry_after(status: &tonic::Status) {
    let delay =
        tonic_types::StatusExt::get_details_retry_info(status).and_then(|info| info.retry_delay);
    if let Some(delay) = delay {
        tokio::time::sleep(delay.min(Duration::from_secs(1))).await;
    }
}

/// A failed call's code by name; tonic's INTERNAL for a call it sent after
/// the server's graceful GOAWAY (which the server never took; the README's
/// shutdown section) is told apart as `GoAway`.
fn code_of(status: &tonic::Status) -> String {
    let cause = format!("{:?}", std::error::Error::source(status));
    if status.code() == tonic::Code::Internal
        && cause.contains("GoAway")
        && cause.contains("NO_ERROR")
    {
        return "GoAway".to_owned();
    }
    format!("{:?}", status.code())
}

/// `hold`: unfinished Checks held open on the service (the memory probe).
async fn hold(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::atomic::Ordering::Relaxed;
    let addr = args
        .target
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()?;
    let check = "/envoy.service.auth.v3.Authorization/Check";
    let announced = 1_000_000;
    let holding = unfinished::Holding::open(
        addr,
        check,
        args.connections,
        args.concurrency,
        announced,
        announced as usize,
    )
    .await
    .map_err(|err| err.to_string())?;
    // Until, for half a second, nothing more was sent or stopped.
    let mut last = (usize::MAX, usize::MAX);
    for _ in 0..40 {
        let now = (holding.held.sent_bytes.load(Relaxed), holding.still_held());
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held = &holding.held;
    println!(
        "{{\"mode\":\"Hold\",\"opened\":{},\"unopened\":{},\"held\":{},\"answered\":{},\"reset\":{},\"sent_bytes\":{}}}",
        held.opened.load(Relaxed),
        held.unopened.load(Relaxed),
        holding.still_held(),
        held.answered.load(Relaxed),
        held.reset.load(Relaxed),
        held.sent_bytes.load(Relaxed)
    );
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    holding.close();
    Ok(())
}
