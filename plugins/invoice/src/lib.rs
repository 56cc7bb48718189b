//! Example jobbox plugin `invoice`: totals an invoice in integer cents.
//!
//! The payload is an invoice such as
//!
//! ```json
//! {"currency": "EUR",
//!  "lines": [{"sku": "A-1", "qty": 3, "unit_price_cents": 1999, "tax_rate_bps": 2000}],
//!  "discount_bps": 0}
//! ```
//!
//! and the output is its totals:
//!
//! ```json
//! {"currency": "EUR", "lines": 1, "subtotal_cents": 5997, "discount_cents": 0,
//!  "tax_cents": 1199, "total_cents": 7196}
//! ```
//!
//! Rates are in basis points (1 bp = 0.01 %, so 10 000 bp = 100 %). All
//! arithmetic is on integers, with every intermediate checked for overflow,
//! and the only rounding is half-up (half a cent rounds away from zero):
//!
//! - each line's net amount is `qty × unit_price_cents`;
//! - `subtotal_cents` is the sum of the net amounts;
//! - the discount applies to the subtotal, before tax:
//!   `discount_cents = round(subtotal × discount_bps / 10 000)`;
//! - each line is taxed on its discounted net amount and rounded on its own:
//!   `tax_i = round(net_i × (10 000 − discount_bps) / 10 000 × tax_rate_bps_i / 10 000)`,
//!   computed exactly and rounded once; `tax_cents` is the sum of the `tax_i`;
//! - `total_cents = subtotal_cents − discount_cents + tax_cents`.
//!
//! Invalid input is a permanent error whose message names the offending
//! field: malformed JSON, a missing or mistyped field, a currency that is not
//! three uppercase letters, no lines, an empty SKU, a quantity below 1, a
//! negative price, a rate above 10 000 bp, or an unknown field (rejected so
//! that a misspelt `discount_bps` cannot silently go unapplied). Amounts too
//! large to total are a permanent error too.

use jobbox_sdk::{Guest, Job, JobError, Output, log};
use serde_json::{Map, Value, json};

/// The plugin; it holds no state, as every attempt runs in a fresh instance.
struct Invoice;

impl Guest for Invoice {
    fn run(job: Job) -> Result<Output, JobError> {
        let invoice = parse(&job.payload)
            .map_err(|message| JobError::permanent(format!("invalid invoice: {message}")))?;
        let totals = invoice.totals().map_err(JobError::permanent)?;
        log::info(&format!(
            "invoice total {} {} cents over {} line(s)",
            invoice.currency, totals.total_cents, totals.lines
        ));
        Ok(Output::new(totals.to_json(&invoice.currency).to_string()))
    }
}

jobbox_sdk::export!(Invoice);

/// One basis point is a ten-thousandth: the denominator of every rate.
const BPS_SCALE: u64 = 10_000;

/// A validated invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InvoiceInput {
    /// An ISO 4217-style code: three uppercase ASCII letters.
    currency: String,
    /// At least one line.
    lines: Vec<Line>,
    /// The discount on the subtotal, at most 10 000 bp.
    discount_bps: u64,
}

/// A validated invoice line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// At least 1.
    qty: u64,
    unit_price_cents: u64,
    /// At most 10 000 bp.
    tax_rate_bps: u64,
}

/// The computed totals of an invoice, all in cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Totals {
    lines: usize,
    subtotal_cents: u64,
    discount_cents: u64,
    tax_cents: u64,
    total_cents: u64,
}

impl Totals {
    /// The plugin's output document.
    fn to_json(self, currency: &str) -> Value {
        json!({
            "currency": currency,
            "lines": self.lines,
            "subtotal_cents": self.subtotal_cents,
            "discount_cents": self.discount_cents,
            "tax_cents": self.tax_cents,
            "total_cents": self.total_cents,
        })
    }
}

/// Divides by `divisor`, rounding half up. Every amount here is
/// non-negative, so half up and half away from zero agree.
fn div_round_half_up(dividend: u128, divisor: u128) -> u128 {
    (dividend + divisor / 2) / divisor
}

impl InvoiceInput {
    /// Computes the totals as the crate documentation describes, or says
    /// which amount overflowed.
    fn totals(&self) -> Result<Totals, String> {
        let overflow = |what: &str| format!("invoice amounts overflow: {what} is too large");

        let mut subtotal: u64 = 0;
        let mut tax: u64 = 0;
        // The fraction of each net amount that remains after the discount,
        // in basis points; the tax is computed on that remainder.
        let kept_bps = u128::from(BPS_SCALE - self.discount_bps);
        for (i, line) in self.lines.iter().enumerate() {
            let net = line.qty.checked_mul(line.unit_price_cents).ok_or_else(|| {
                overflow(&format!("lines[{i}].qty × lines[{i}].unit_price_cents"))
            })?;
            subtotal = subtotal
                .checked_add(net)
                .ok_or_else(|| overflow("subtotal_cents"))?;
            // A u64 times two factors of at most 10 000 each fits in a u128
            // with room to spare. Narrowing the result back cannot fail
            // either, as a line's tax never exceeds its net amount, but it is
            // checked all the same rather than truncated.
            let exact = u128::from(net) * kept_bps * u128::from(line.tax_rate_bps);
            let scale = u128::from(BPS_SCALE) * u128::from(BPS_SCALE);
            let line_tax = u64::try_from(div_round_half_up(exact, scale))
                .map_err(|_| overflow(&format!("the tax of lines[{i}]")))?;
            tax = tax
                .checked_add(line_tax)
                .ok_or_else(|| overflow("tax_cents"))?;
        }

        let discount = u64::try_from(div_round_half_up(
            u128::from(subtotal) * u128::from(self.discount_bps),
            u128::from(BPS_SCALE),
        ))
        .map_err(|_| overflow("discount_cents"))?;
        // The discount is at most 100 % of the subtotal, so this cannot
        // underflow; the check keeps that argument out of the arithmetic.
        let total = subtotal
            .checked_sub(discount)
            .and_then(|discounted| discounted.checked_add(tax))
            .ok_or_else(|| overflow("total_cents"))?;

        Ok(Totals {
            lines: self.lines.len(),
            subtotal_cents: subtotal,
            discount_cents: discount,
            tax_cents: tax,
            total_cents: total,
        })
    }
}

/// Parses and validates the payload, or says what is wrong with it, naming
/// the field.
fn parse(payload: &str) -> Result<InvoiceInput, String> {
    let document: Value =
        serde_json::from_str(payload).map_err(|e| format!("payload is not valid JSON: {e}"))?;
    let root = object(&document, "payload")?;
    reject_unknown_fields(root, "", &["currency", "lines", "discount_bps"])?;

    let currency = string(required(root, "", "currency")?, "currency")?;
    if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(format!(
            "currency: expected three uppercase letters such as \"EUR\", got {currency:?}"
        ));
    }

    let Value::Array(raw_lines) = required(root, "", "lines")? else {
        return Err("lines: expected an array of invoice lines".to_owned());
    };
    if raw_lines.is_empty() {
        return Err("lines: an invoice needs at least one line".to_owned());
    }
    let lines = raw_lines
        .iter()
        .enumerate()
        .map(|(i, raw)| parse_line(raw, &format!("lines[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;

    let discount_bps = match root.get("discount_bps") {
        None | Some(Value::Null) => 0,
        Some(value) => rate_bps(value, "discount_bps")?,
    };

    Ok(InvoiceInput {
        currency: currency.to_owned(),
        lines,
        discount_bps,
    })
}

/// Parses and validates the invoice line at `path`.
fn parse_line(raw: &Value, path: &str) -> Result<Line, String> {
    let line = object(raw, path)?;
    reject_unknown_fields(
        line,
        path,
        &["sku", "qty", "unit_price_cents", "tax_rate_bps"],
    )?;

    let sku_path = format!("{path}.sku");
    if string(required(line, path, "sku")?, &sku_path)?
        .trim()
        .is_empty()
    {
        return Err(format!("{sku_path}: must not be empty"));
    }

    let qty_path = format!("{path}.qty");
    let qty = non_negative_integer(required(line, path, "qty")?, &qty_path)?;
    if qty == 0 {
        return Err(format!("{qty_path}: must be at least 1, got 0"));
    }

    let price_path = format!("{path}.unit_price_cents");
    let unit_price_cents =
        non_negative_integer(required(line, path, "unit_price_cents")?, &price_path)?;

    let tax_rate_bps = rate_bps(
        required(line, path, "tax_rate_bps")?,
        &format!("{path}.tax_rate_bps"),
    )?;

    Ok(Line {
        qty,
        unit_price_cents,
        tax_rate_bps,
    })
}

/// The object that `value` (at `path`) must be.
fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{path}: expected a JSON object"))
}

/// The field `name` of the object at `path`, which must be present and not
/// null.
fn required<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<&'a Value, String> {
    match object.get(name) {
        None | Some(Value::Null) => Err(format!("{}: missing required field", join(path, name))),
        Some(value) => Ok(value),
    }
}

/// Fails on the first field of the object at `path` that is not in `known`.
fn reject_unknown_fields(
    object: &Map<String, Value>,
    path: &str,
    known: &[&str],
) -> Result<(), String> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(format!(
            "{}: unknown field (expected one of: {})",
            join(path, key),
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// The string that `value` (at `path`) must be.
fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("{path}: expected a string, got {value}"))
}

/// The non-negative integer that `value` (at `path`) must be.
fn non_negative_integer(value: &Value, path: &str) -> Result<u64, String> {
    match value {
        Value::Number(number) => match (number.as_u64(), number.as_i64()) {
            (Some(n), _) => Ok(n),
            (None, Some(negative)) => Err(format!("{path}: must not be negative, got {negative}")),
            (None, None) => Err(format!("{path}: expected a whole number, got {number}")),
        },
        other => Err(format!("{path}: expected a whole number, got {other}")),
    }
}

/// The rate in basis points that `value` (at `path`) must be: 0 to 10 000.
fn rate_bps(value: &Value, path: &str) -> Result<u64, String> {
    let bps = non_negative_integer(value, path)?;
    if bps > BPS_SCALE {
        return Err(format!(
            "{path}: must be at most {BPS_SCALE} (100 %), got {bps}"
        ));
    }
    Ok(bps)
}

/// The path of the field `name` inside the object at `path` (the root when
/// `path` is empty).
fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and totals `payload`, as the plugin does.
    fn total(payload: &str) -> Result<Value, String> {
        let invoice = parse(payload)?;
        Ok(invoice.totals()?.to_json(&invoice.currency))
    }

    #[test]
    fn totals_the_documented_example() {
        let payload = r#"{"currency":"EUR","lines":[{"sku":"A-1","qty":3,"unit_price_cents":1999,"tax_rate_bps":2000}],"discount_bps":0}"#;
        assert_eq!(
            total(payload).unwrap(),
            json!({"currency": "EUR", "lines": 1, "subtotal_cents": 5997, "discount_cents": 0,
                   "tax_cents": 1199, "total_cents": 7196})
        );
    }

    #[test]
    fn rounds_tax_half_up_per_line_and_discounts_before_tax() {
        // Net 250 and 150; subtotal 400; 10 % discount is 40. Line taxes on
        // the discounted nets 225 and 135 at 1 % are 2.25 → 2 and
        // 1.35 → 1; at 10 % on 225 and 5 % on 135 they are 22.5 → 23 and
        // 6.75 → 7.
        let lines = |rate_a: u32, rate_b: u32| {
            format!(
                r#"{{"currency":"USD","discount_bps":1000,"lines":[
                    {{"sku":"a","qty":1,"unit_price_cents":250,"tax_rate_bps":{rate_a}}},
                    {{"sku":"b","qty":3,"unit_price_cents":50,"tax_rate_bps":{rate_b}}}]}}"#
            )
        };
        let low = total(&lines(100, 100)).unwrap();
        assert_eq!(low["subtotal_cents"], 400);
        assert_eq!(low["discount_cents"], 40);
        assert_eq!(low["tax_cents"], 3);
        assert_eq!(low["total_cents"], 363);
        let high = total(&lines(1000, 500)).unwrap();
        assert_eq!(high["tax_cents"], 30);
        assert_eq!(high["total_cents"], 390);
    }

    #[test]
    fn a_missing_discount_is_zero_and_a_full_discount_leaves_nothing() {
        let payload = r#"{"currency":"GBP","lines":[{"sku":"x","qty":2,"unit_price_cents":5,"tax_rate_bps":10000}]}"#;
        assert_eq!(total(payload).unwrap()["total_cents"], 20);
        let free = r#"{"currency":"GBP","discount_bps":10000,"lines":[{"sku":"x","qty":2,"unit_price_cents":5,"tax_rate_bps":10000}]}"#;
        let free = total(free).unwrap();
        assert_eq!(free["discount_cents"], 10);
        assert_eq!(free["tax_cents"], 0);
        assert_eq!(free["total_cents"], 0);
    }

    #[test]
    fn invalid_input_names_the_field() {
        let line = r#"{"sku":"A-1","qty":1,"unit_price_cents":100,"tax_rate_bps":2000}"#;
        let cases = [
            ("not json".to_owned(), "not valid JSON"),
            ("[]".to_owned(), "payload: expected a JSON object"),
            (format!(r#"{{"lines":[{line}]}}"#), "currency: missing"),
            (format!(r#"{{"currency":"eur","lines":[{line}]}}"#), "currency: expected three uppercase"),
            (format!(r#"{{"currency":"EURO","lines":[{line}]}}"#), "currency: expected three uppercase"),
            (r#"{"currency":"EUR","lines":[]}"#.to_owned(), "lines: an invoice needs at least one line"),
            (r#"{"currency":"EUR"}"#.to_owned(), "lines: missing"),
            (
                r#"{"currency":"EUR","lines":[{"sku":"A-1","unit_price_cents":1,"tax_rate_bps":0}]}"#.to_owned(),
                "lines[0].qty: missing",
            ),
            (
                r#"{"currency":"EUR","lines":[{"sku":"A-1","qty":0,"unit_price_cents":1,"tax_rate_bps":0}]}"#.to_owned(),
                "lines[0].qty: must be at least 1",
            ),
            (
                format!(r#"{{"currency":"EUR","lines":[{line},{{"sku":"B","qty":-2,"unit_price_cents":1,"tax_rate_bps":0}}]}}"#),
                "lines[1].qty: must not be negative",
            ),
            (
                r#"{"currency":"EUR","lines":[{"sku":"A-1","qty":1.5,"unit_price_cents":1,"tax_rate_bps":0}]}"#.to_owned(),
                "lines[0].qty: expected a whole number",
            ),
            (
                r#"{"currency":"EUR","lines":[{"sku":"A-1","qty":1,"unit_price_cents":-1,"tax_rate_bps":0}]}"#.to_owned(),
                "lines[0].unit_price_cents: must not be negative",
            ),
            (
                r#"{"currency":"EUR","lines":[{"sku":"A-1","qty":1,"unit_price_cents":1,"tax_rate_bps":10001}]}"#.to_owned(),
                "lines[0].tax_rate_bps: must be at most 10000",
            ),
            (
                r#"{"currency":"EUR","lines":[{"sku":" ","qty":1,"unit_price_cents":1,"tax_rate_bps":0}]}"#.to_owned(),
                "lines[0].sku: must not be empty",
            ),
            (format!(r#"{{"currency":"EUR","discount_bps":20000,"lines":[{line}]}}"#), "discount_bps: must be at most"),
            (format!(r#"{{"currency":"EUR","discount_bsp":100,"lines":[{line}]}}"#), "discount_bsp: unknown field"),
        ];
        for (payload, expected) in cases {
            let error = total(&payload).unwrap_err();
            assert!(
                error.contains(expected),
                "payload {payload}: error {error:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrong_total() {
        let max = u64::MAX;
        let product = format!(
            r#"{{"currency":"EUR","lines":[{{"sku":"a","qty":2,"unit_price_cents":{max},"tax_rate_bps":0}}]}}"#
        );
        assert!(
            total(&product)
                .unwrap_err()
                .contains("lines[0].qty × lines[0].unit_price_cents")
        );
        let sum = format!(
            r#"{{"currency":"EUR","lines":[{{"sku":"a","qty":1,"unit_price_cents":{max},"tax_rate_bps":0}},
                                            {{"sku":"b","qty":1,"unit_price_cents":1,"tax_rate_bps":0}}]}}"#
        );
        assert!(total(&sum).unwrap_err().contains("subtotal_cents"));
        let with_tax = format!(
            r#"{{"currency":"EUR","lines":[{{"sku":"a","qty":1,"unit_price_cents":{max},"tax_rate_bps":1}}]}}"#
        );
        assert!(total(&with_tax).unwrap_err().contains("total_cents"));
    }
}
