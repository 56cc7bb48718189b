//! Test jobbox plugin `entropy`: reads everything a replay must reproduce
//! (the wall clock, the monotonic clock, secure and insecure random
//! numbers, and the kv key `seen` when granted) and returns it, or with
//! `{"fail": true}` fails permanently with all of it in the message.

use jobbox_sdk::{JobError, JobOf, Output, TypedGuest, kv, log};
use serde::Deserialize;
use serde_json::json;

struct Entropy;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    fail: bool,
}

impl TypedGuest for Entropy {
    type Payload = Payload;

    fn run(job: JobOf<Payload>) -> Result<Output, JobError> {
        let wall = wasip2::clocks::wall_clock::now();
        let mono = wasip2::clocks::monotonic_clock::now();
        let random = wasip2::random::random::get_random_u64();
        let insecure = wasip2::random::insecure::get_insecure_random_u64();
        let seen = match kv::get("seen") {
            Ok(v) => v.map(|v| String::from_utf8_lossy(&v).into_owned()),
            Err(e) => Some(format!("kv error: {e:?}")),
        };
        let read = json!({
            "wall_s": wall.seconds,
            "wall_ns": wall.nanoseconds,
            "mono": mono,
            "random": random.to_string(),
            "insecure": insecure.to_string(),
            "seen": seen,
            "fencing_token": job.fencing_token,
            "deadline_ms": job.deadline_ms,
        });
        log::info(&format!("entropy read {read}"));
        if job.payload.fail {
            return Err(JobError::permanent(format!(
                "entropy failed having read {read}"
            )));
        }
        Ok(Output::json(&read))
    }
}

jobbox_sdk::export_typed!(Entropy);
