//! Example jobbox plugin `ledger-credit`: credits an account in a ledger kept
//! in kv, exactly once per transfer, and announces it on the outbox.
//!
//! The payload is a transfer:
//!
//! ```json
//! {"transfer_id": "t-1", "account": "alice", "amount_cents": 500, "from": "bank"}
//! ```
//!
//! - `transfer_id`: the business key of the transfer, 1 to 128 printable
//!   ASCII characters (no spaces);
//! - `account`: the account credited, 1 to 64 characters of `a-z`, `0-9`,
//!   `_` and `-`;
//! - `amount_cents`: a whole number of cents, at least 1;
//! - `from` (optional): an account, named like `account` but another one,
//!   debited by the same amount first.
//!
//! The output, which is also the payload of the event emitted on the topic
//! `credited`, is the transfer as applied:
//!
//! ```json
//! {"transfer_id": "t-1", "account": "alice", "amount_cents": 500, "balance_after_cents": 500}
//! ```
//!
//! # State
//!
//! The plugin needs the kv grant, and an outbox sink for `credited`. In its
//! kv namespace:
//!
//! - `balance/<account>` holds the account's balance in cents, as a decimal
//!   ASCII integer; an absent key is a balance of 0.
//! - `transfer/<transfer_id>` records each applied transfer, as the JSON of
//!   the output plus `from` when there was one.
//!
//! Each balance changes by a compare-and-swap of the value just read. The
//! host gives an attempt one consistent value per key and checks every key
//! it read when the completion commits: if another job changed a balance in
//! the meantime, nothing of this attempt commits and the job is retried, so
//! no update is ever lost. (The swap's retry loop only matters to a host
//! without that check.)
//!
//! # Exactly once
//!
//! Everything the attempt writes, and the event, commit together with the
//! job's completion, or not at all: an attempt that fails, times out or
//! traps leaves no trace, so a transfer is never half applied. A transfer
//! whose `transfer_id` is already recorded is not applied again: the plugin
//! returns the recorded result (without emitting again), which makes the
//! transfer idempotent by its business key even across different jobs. The
//! same `transfer_id` with other details is refused.
//!
//! # Errors
//!
//! Permanent, so the job is discarded at once:
//!
//! - invalid input, naming the field: malformed JSON, a missing or mistyped
//!   field, an unknown field, an amount below 1, a malformed account name,
//!   `from` equal to `account`;
//! - `insufficient funds in <from>: balance X < Y`;
//! - a balance that would overflow, or a stored balance that is not a
//!   decimal integer;
//! - a `transfer_id` already recorded with other details;
//! - no kv grant, or no outbox sink for `credited` (a configuration error).
//!
//! Retryable: losing the compare-and-swap race five times, the kv store
//! being unavailable, a full outbox backlog.

use jobbox_sdk::{Guest, Job, JobError, KvError, Output, kv, log, outbox};
use serde_json::{Map, Value, json};

/// The plugin; it holds no state, as every attempt runs in a fresh instance.
struct LedgerCredit;

impl Guest for LedgerCredit {
    fn run(job: Job) -> Result<Output, JobError> {
        let transfer = parse(&job.payload)
            .map_err(|message| JobError::permanent(format!("invalid transfer: {message}")))?;
        match apply(&mut HostKv, &transfer)? {
            Outcome::Replayed(applied) => {
                log::info(&format!(
                    "transfer {} was already applied; returning the recorded result",
                    transfer.transfer_id
                ));
                Ok(Output::new(applied.result().to_string()))
            }
            Outcome::Applied(applied) => {
                let result = applied.result().to_string();
                outbox::emit(EVENT_TOPIC, &result)?;
                log::info(&format!(
                    "transfer {}: credited {} cents to {}{}; balance now {}",
                    transfer.transfer_id,
                    transfer.amount_cents,
                    transfer.account,
                    transfer
                        .from
                        .as_ref()
                        .map(|from| format!(" from {from}"))
                        .unwrap_or_default(),
                    applied.balance_after_cents
                ));
                Ok(Output::new(result))
            }
        }
    }
}

jobbox_sdk::export!(LedgerCredit);

/// The outbox topic of the event announcing each applied transfer.
const EVENT_TOPIC: &str = "credited";

/// How many times a balance is read and swapped before giving up.
const CAS_ATTEMPTS: u32 = 5;

/// The longest account name.
const MAX_ACCOUNT_LEN: usize = 64;

/// The longest transfer id.
const MAX_TRANSFER_ID_LEN: usize = 128;

/// The fields a transfer may have.
const FIELDS: &[&str] = &["transfer_id", "account", "amount_cents", "from"];

/// A validated transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Transfer {
    transfer_id: String,
    account: String,
    amount_cents: u64,
    /// The account debited, never equal to `account`.
    from: Option<String>,
}

/// A transfer as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    transfer: Transfer,
    /// The credited account's balance right after the transfer.
    balance_after_cents: u64,
}

impl Applied {
    /// The plugin's output, and the event's payload.
    fn result(&self) -> Value {
        json!({
            "transfer_id": self.transfer.transfer_id,
            "account": self.transfer.account,
            "amount_cents": self.transfer.amount_cents,
            "balance_after_cents": self.balance_after_cents,
        })
    }

    /// What `transfer/<transfer_id>` records: the result, plus `from` when
    /// there was one, so that a replay can be checked against it.
    fn record(&self) -> Value {
        let mut record = self.result();
        if let Some(from) = &self.transfer.from {
            record["from"] = json!(from);
        }
        record
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Applied the transfer now.
    Applied(Applied),
    /// Found the transfer already applied, as recorded.
    Replayed(Applied),
}

/// The kv operations the ledger uses: the host's kv in the plugin, a map in
/// the tests.
trait Store {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError>;
}

/// The host's kv.
struct HostKv;

impl Store for HostKv {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        kv::get(key)
    }

    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        kv::compare_and_swap(key, expected, new)
    }
}

/// The key of an account's balance.
fn balance_key(account: &str) -> String {
    format!("balance/{account}")
}

/// The key of a transfer's record.
fn transfer_key(transfer_id: &str) -> String {
    format!("transfer/{transfer_id}")
}

/// Applies `transfer` unless it is recorded already. A kv error becomes the
/// SDK's `JobError` for it.
fn apply(store: &mut impl Store, transfer: &Transfer) -> Result<Outcome, JobError> {
    let record_key = transfer_key(&transfer.transfer_id);
    if let Some(recorded) = store.get(&record_key)? {
        return replayed(&recorded, transfer)
            .map(Outcome::Replayed)
            .map_err(JobError::permanent);
    }

    let amount = transfer.amount_cents;
    if let Some(from) = &transfer.from {
        update_balance(store, from, |balance| debit(balance, amount, from))?;
    }
    let balance_after_cents = update_balance(store, &transfer.account, |balance| {
        credit(balance, amount, &transfer.account)
    })?;
    let applied = Applied {
        transfer: transfer.clone(),
        balance_after_cents,
    };

    let record = applied.record().to_string();
    if !store.compare_and_swap(&record_key, None, Some(record.as_bytes()))? {
        // Another attempt recorded it meanwhile. Failing discards this
        // attempt's balance updates; the retry finds the record.
        return Err(JobError::retryable(format!(
            "transfer {} was recorded concurrently",
            transfer.transfer_id
        )));
    }
    Ok(Outcome::Applied(applied))
}

/// Changes the balance of `account` by `change` with a compare-and-swap,
/// re-reading and retrying when another job changed it in between. Returns
/// the new balance.
fn update_balance(
    store: &mut impl Store,
    account: &str,
    change: impl Fn(u64) -> Result<u64, String>,
) -> Result<u64, JobError> {
    let key = balance_key(account);
    for _ in 0..CAS_ATTEMPTS {
        let current = store.get(&key)?;
        let balance = parse_balance(current.as_deref())
            .map_err(|e| JobError::permanent(format!("{key}: {e}")))?;
        let next = change(balance).map_err(JobError::permanent)?;
        let swapped =
            store.compare_and_swap(&key, current.as_deref(), Some(next.to_string().as_bytes()))?;
        if swapped {
            return Ok(next);
        }
    }
    Err(JobError::retryable(format!(
        "{key} kept changing: gave up after {CAS_ATTEMPTS} compare-and-swap attempts"
    )))
}

/// The balance stored as `value`: absent is 0, else a decimal integer.
fn parse_balance(value: Option<&[u8]>) -> Result<u64, String> {
    let Some(bytes) = value else {
        return Ok(0);
    };
    let invalid = || {
        format!(
            "the stored balance {:?} is not a decimal integer",
            String::from_utf8_lossy(bytes)
        )
    };
    // `u64::from_str` would also take a leading `+`.
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(invalid)
}

/// `balance` less `amount`, or why `from` cannot pay it.
fn debit(balance: u64, amount: u64, from: &str) -> Result<u64, String> {
    balance
        .checked_sub(amount)
        .ok_or_else(|| format!("insufficient funds in {from}: balance {balance} < {amount}"))
}

/// `balance` plus `amount`, or why `account` cannot hold it.
fn credit(balance: u64, amount: u64, account: &str) -> Result<u64, String> {
    balance
        .checked_add(amount)
        .ok_or_else(|| format!("the balance of {account} would overflow: {balance} + {amount}"))
}

/// The applied transfer that `recorded` (the value of its
/// `transfer/<transfer_id>` key) describes, or why it does not match
/// `transfer`.
fn replayed(recorded: &[u8], transfer: &Transfer) -> Result<Applied, String> {
    let key = transfer_key(&transfer.transfer_id);
    let corrupt = |why: String| format!("{key}: the stored record is invalid: {why}");
    let mut record: Value = serde_json::from_slice(recorded).map_err(|e| corrupt(e.to_string()))?;
    let balance_after_cents = record
        .as_object_mut()
        .and_then(|fields| fields.remove("balance_after_cents"))
        .and_then(|balance| balance.as_u64())
        .ok_or_else(|| corrupt("no balance_after_cents".to_owned()))?;
    let applied = parse_value(&record).map_err(corrupt)?;
    if applied != *transfer {
        return Err(format!(
            "transfer_id {:?} was already applied with other details: {}",
            transfer.transfer_id,
            String::from_utf8_lossy(recorded)
        ));
    }
    Ok(Applied {
        transfer: applied,
        balance_after_cents,
    })
}

/// Parses and validates the payload, or says what is wrong with it, naming
/// the field.
fn parse(payload: &str) -> Result<Transfer, String> {
    let document: Value =
        serde_json::from_str(payload).map_err(|e| format!("payload is not valid JSON: {e}"))?;
    parse_value(&document)
}

/// Validates a transfer given as a JSON document.
fn parse_value(document: &Value) -> Result<Transfer, String> {
    let root = document
        .as_object()
        .ok_or_else(|| "payload: expected a JSON object".to_owned())?;
    if let Some(unknown) = root.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(format!(
            "{unknown}: unknown field (expected one of: {})",
            FIELDS.join(", ")
        ));
    }

    let transfer_id = string(required(root, "transfer_id")?, "transfer_id")?;
    let id_ok = (1..=MAX_TRANSFER_ID_LEN).contains(&transfer_id.len())
        && transfer_id.bytes().all(|b| b.is_ascii_graphic());
    if !id_ok {
        return Err(format!(
            "transfer_id: expected 1 to {MAX_TRANSFER_ID_LEN} printable ASCII characters \
             without spaces, got {transfer_id:?}"
        ));
    }

    let account = account_name(required(root, "account")?, "account")?;

    let amount_cents = match required(root, "amount_cents")? {
        Value::Number(number) => match (number.as_u64(), number.as_i64()) {
            (Some(0), _) | (None, Some(_)) => {
                return Err(format!(
                    "amount_cents: must be greater than 0, got {number}"
                ));
            }
            (Some(amount), _) => amount,
            (None, None) => {
                return Err(format!(
                    "amount_cents: expected a whole number of cents, got {number}"
                ));
            }
        },
        other => {
            return Err(format!(
                "amount_cents: expected a whole number of cents, got {other}"
            ));
        }
    };

    let from = match root.get("from") {
        None | Some(Value::Null) => None,
        Some(value) => Some(account_name(value, "from")?),
    };
    if from == Some(account) {
        return Err(format!(
            "from: must differ from account, both are {account:?}"
        ));
    }

    Ok(Transfer {
        transfer_id: transfer_id.to_owned(),
        account: account.to_owned(),
        amount_cents,
        from: from.map(str::to_owned),
    })
}

/// The field `name` of `object`, which must be present and not null.
fn required<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    match object.get(name) {
        None | Some(Value::Null) => Err(format!("{name}: missing required field")),
        Some(value) => Ok(value),
    }
}

/// The string that `value` (the field `name`) must be.
fn string<'a>(value: &'a Value, name: &str) -> Result<&'a str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("{name}: expected a string, got {value}"))
}

/// The account name that `value` (the field `name`) must be.
fn account_name<'a>(value: &'a Value, name: &str) -> Result<&'a str, String> {
    let account = string(value, name)?;
    let ok = (1..=MAX_ACCOUNT_LEN).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(account)
    } else {
        Err(format!(
            "{name}: expected 1 to {MAX_ACCOUNT_LEN} characters of a-z, 0-9, _ and -, \
             got {account:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use super::*;

    /// An in-memory store. Before each compare-and-swap it applies the next
    /// queued write, if any, as another job racing this one would.
    #[derive(Debug, Default)]
    struct MemStore {
        values: BTreeMap<String, Vec<u8>>,
        racing_writes: VecDeque<(String, Vec<u8>)>,
        swaps: u32,
    }

    impl MemStore {
        fn with(entries: &[(&str, &str)]) -> Self {
            let mut store = Self::default();
            for (key, value) in entries {
                store.put(key, value);
            }
            store
        }

        fn put(&mut self, key: &str, value: &str) {
            self.values
                .insert(key.to_owned(), value.as_bytes().to_vec());
        }

        fn text(&self, key: &str) -> Option<String> {
            self.values
                .get(key)
                .map(|value| String::from_utf8(value.clone()).unwrap())
        }
    }

    impl Store for MemStore {
        fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
            Ok(self.values.get(key).cloned())
        }

        fn compare_and_swap(
            &mut self,
            key: &str,
            expected: Option<&[u8]>,
            new: Option<&[u8]>,
        ) -> Result<bool, KvError> {
            self.swaps += 1;
            if let Some((racing_key, racing_value)) = self.racing_writes.pop_front() {
                self.values.insert(racing_key, racing_value);
            }
            if self.values.get(key).map(Vec::as_slice) != expected {
                return Ok(false);
            }
            match new {
                Some(value) => self.values.insert(key.to_owned(), value.to_vec()),
                None => self.values.remove(key),
            };
            Ok(true)
        }
    }

    fn transfer(payload: &str) -> Transfer {
        parse(payload).unwrap()
    }

    fn permanent(result: Result<Outcome, JobError>) -> String {
        match result {
            Err(JobError::Permanent(message)) => message,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn credits_an_absent_account_from_zero() {
        let mut store = MemStore::default();
        let t = transfer(r#"{"transfer_id":"t-1","account":"alice","amount_cents":500}"#);
        let Outcome::Applied(applied) = apply(&mut store, &t).unwrap() else {
            panic!("not applied");
        };
        assert_eq!(
            applied.result(),
            json!({"transfer_id": "t-1", "account": "alice", "amount_cents": 500,
                   "balance_after_cents": 500})
        );
        assert_eq!(store.text("balance/alice").as_deref(), Some("500"));
        assert_eq!(
            serde_json::from_str::<Value>(&store.text("transfer/t-1").unwrap()).unwrap(),
            applied.result()
        );
    }

    #[test]
    fn debits_the_source_account_first() {
        let mut store = MemStore::with(&[("balance/bank", "1000"), ("balance/alice", "20")]);
        let t =
            transfer(r#"{"transfer_id":"t-2","account":"alice","amount_cents":500,"from":"bank"}"#);
        let Outcome::Applied(applied) = apply(&mut store, &t).unwrap() else {
            panic!("not applied");
        };
        assert_eq!(applied.balance_after_cents, 520);
        assert_eq!(store.text("balance/bank").as_deref(), Some("500"));
        assert_eq!(store.text("balance/alice").as_deref(), Some("520"));
        let record: Value = serde_json::from_str(&store.text("transfer/t-2").unwrap()).unwrap();
        assert_eq!(record["from"], "bank");
        assert!(applied.result().get("from").is_none());
    }

    #[test]
    fn refuses_insufficient_funds_without_writing() {
        let mut store = MemStore::with(&[("balance/bank", "499")]);
        let t =
            transfer(r#"{"transfer_id":"t-3","account":"alice","amount_cents":500,"from":"bank"}"#);
        assert_eq!(
            permanent(apply(&mut store, &t)),
            "insufficient funds in bank: balance 499 < 500"
        );
        assert_eq!(store.swaps, 0);
        assert_eq!(store.text("balance/bank").as_deref(), Some("499"));
        assert_eq!(store.text("balance/alice"), None);
    }

    #[test]
    fn a_recorded_transfer_is_returned_not_applied_again() {
        let mut store = MemStore::with(&[("balance/bank", "1000")]);
        let t =
            transfer(r#"{"transfer_id":"t-4","account":"alice","amount_cents":300,"from":"bank"}"#);
        let Outcome::Applied(first) = apply(&mut store, &t).unwrap() else {
            panic!("not applied");
        };
        let swaps = store.swaps;
        assert_eq!(apply(&mut store, &t).unwrap(), Outcome::Replayed(first));
        assert_eq!(store.swaps, swaps);
        assert_eq!(store.text("balance/bank").as_deref(), Some("700"));
        assert_eq!(store.text("balance/alice").as_deref(), Some("300"));

        let other = transfer(r#"{"transfer_id":"t-4","account":"bob","amount_cents":300}"#);
        assert!(
            permanent(apply(&mut store, &other))
                .starts_with(r#"transfer_id "t-4" was already applied with other details"#)
        );
    }

    #[test]
    fn a_lost_race_is_retried_on_the_new_balance() {
        let mut store = MemStore::with(&[("balance/alice", "100")]);
        store
            .racing_writes
            .push_back(("balance/alice".to_owned(), b"150".to_vec()));
        let t = transfer(r#"{"transfer_id":"t-5","account":"alice","amount_cents":50}"#);
        let Outcome::Applied(applied) = apply(&mut store, &t).unwrap() else {
            panic!("not applied");
        };
        assert_eq!(applied.balance_after_cents, 200);
        assert_eq!(store.text("balance/alice").as_deref(), Some("200"));
    }

    #[test]
    fn endless_contention_is_retryable() {
        let mut store = MemStore::default();
        for i in 0..CAS_ATTEMPTS {
            store
                .racing_writes
                .push_back(("balance/alice".to_owned(), i.to_string().into_bytes()));
        }
        let t = transfer(r#"{"transfer_id":"t-6","account":"alice","amount_cents":1}"#);
        match apply(&mut store, &t) {
            Err(JobError::Retryable(error)) => {
                assert!(
                    error.message.contains("balance/alice kept changing"),
                    "{error:?}"
                );
            }
            other => panic!("expected a retryable error, got {other:?}"),
        }
        assert_eq!(store.text("transfer/t-6"), None);
    }

    #[test]
    fn corrupt_balances_and_overflow_are_permanent() {
        let t = transfer(r#"{"transfer_id":"t-7","account":"alice","amount_cents":2}"#);
        let mut corrupt = MemStore::with(&[("balance/alice", "12a")]);
        assert!(
            permanent(apply(&mut corrupt, &t)).starts_with("balance/alice: the stored balance")
        );
        let mut full = MemStore::with(&[("balance/alice", &u64::MAX.to_string())]);
        assert!(permanent(apply(&mut full, &t)).starts_with("the balance of alice would overflow"));
    }

    #[test]
    fn balances_are_plain_decimal_integers() {
        assert_eq!(parse_balance(None), Ok(0));
        assert_eq!(parse_balance(Some(b"0")), Ok(0));
        assert_eq!(parse_balance(Some(b"00120")), Ok(120));
        for bad in [
            &b""[..],
            b"+5",
            b"-5",
            b" 5",
            b"5.0",
            b"18446744073709551616",
        ] {
            assert!(parse_balance(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(debit(10, 10, "x"), Ok(0));
        assert_eq!(credit(10, 5, "x"), Ok(15));
    }

    #[test]
    fn invalid_input_names_the_field() {
        let cases = [
            ("nope", "payload is not valid JSON"),
            ("[]", "payload: expected a JSON object"),
            (
                r#"{"account":"a","amount_cents":1}"#,
                "transfer_id: missing required field",
            ),
            (
                r#"{"transfer_id":"","account":"a","amount_cents":1}"#,
                "transfer_id: expected",
            ),
            (
                r#"{"transfer_id":"a b","account":"a","amount_cents":1}"#,
                "transfer_id: expected",
            ),
            (
                r#"{"transfer_id":"t","amount_cents":1}"#,
                "account: missing required field",
            ),
            (
                r#"{"transfer_id":"t","account":"","amount_cents":1}"#,
                "account: expected",
            ),
            (
                r#"{"transfer_id":"t","account":"Alice","amount_cents":1}"#,
                "account: expected",
            ),
            (
                r#"{"transfer_id":"t","account":"a.b","amount_cents":1}"#,
                "account: expected",
            ),
            (
                r#"{"transfer_id":"t","account":7,"amount_cents":1}"#,
                "account: expected a string",
            ),
            (
                r#"{"transfer_id":"t","account":"a"}"#,
                "amount_cents: missing required field",
            ),
            (
                r#"{"transfer_id":"t","account":"a","amount_cents":0}"#,
                "amount_cents: must be greater than 0",
            ),
            (
                r#"{"transfer_id":"t","account":"a","amount_cents":-5}"#,
                "amount_cents: must be greater than 0",
            ),
            (
                r#"{"transfer_id":"t","account":"a","amount_cents":1.5}"#,
                "amount_cents: expected a whole number",
            ),
            (
                r#"{"transfer_id":"t","account":"a","amount_cents":"5"}"#,
                "amount_cents: expected a whole number",
            ),
            (
                r#"{"transfer_id":"t","account":"a","amount_cents":1,"from":"B"}"#,
                "from: expected",
            ),
            (
                r#"{"transfer_id":"t","account":"a","amount_cents":1,"from":"a"}"#,
                "from: must differ from account",
            ),
            (
                r#"{"transfer_id":"t","account":"a","amount_cents":1,"amount":2}"#,
                "amount: unknown field",
            ),
        ];
        for (payload, expected) in cases {
            let error = parse(payload).unwrap_err();
            assert!(error.starts_with(expected), "{payload}: {error}");
        }
        let ok =
            transfer(r#"{"transfer_id":"t-1","account":"alice_2-x","amount_cents":1,"from":null}"#);
        assert_eq!(ok.from, None);
    }
}
