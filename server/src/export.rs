//! The contract's renderings of stored figures: statement and night JSON (kWh strings with
//! 3 decimals, yuan with 2), and the finance CSV (UTF-8 with BOM so Excel opens it cleanly).

use qingnuan_shared::units::{Fen, Wh};
use serde_json::{json, Value};

use crate::store::{NightRow, StatementRow};

/// The UTF-8 byte order mark that makes Excel read a CSV as UTF-8.
pub const BOM: &str = "\u{feff}";

/// Columns of the statements CSV.
pub const CSV_COLUMNS: [&str; 16] = [
    "household",
    "district",
    "town",
    "village",
    "season",
    "offpeak_kwh",
    "subsidised_kwh",
    "cap_kwh",
    "cap_reached_on",
    "city_subsidy_yuan",
    "district_subsidy_yuan",
    "valley_charge_yuan",
    "nights_actual",
    "nights_estimated",
    "nights_missing",
    "flags",
];

fn kwh(wh: i64) -> String {
    Wh(wh).kwh_string().to_string()
}

fn yuan(fen: i64) -> String {
    Fen(fen).yuan_string().to_string()
}

/// CONTRACT.md's statement object.
pub fn statement_json(s: &StatementRow) -> Value {
    json!({
        "household": s.household,
        "season": s.season,
        "offpeak_kwh": kwh(s.offpeak_wh),
        "subsidised_kwh": kwh(s.subsidised_wh),
        "cap_kwh": kwh(s.cap_wh),
        "cap_reached_on": s.cap_reached_on,
        "city_subsidy_yuan": yuan(s.city_fen),
        "district_subsidy_yuan": yuan(s.district_fen),
        "valley_charge_yuan": yuan(s.valley_charge_fen),
        "nights": {"actual": s.nights_actual, "estimated": s.nights_estimated, "missing": s.nights_missing},
        "flags": s.flags,
    })
}

/// CONTRACT.md's night object: `{"night", "kwh", "quality", "flags"}`.
pub fn night_json(n: &NightRow) -> Value {
    json!({"night": n.night, "kwh": kwh(n.wh), "quality": n.quality, "flags": n.flags})
}

/// A night with how its figure was obtained (the stored detail).
pub fn night_detail_json(n: &NightRow) -> Value {
    let mut v = night_json(n);
    if let (Some(obj), Ok(detail)) = (v.as_object_mut(), serde_json::from_str::<Value>(&n.detail)) {
        obj.insert("detail".into(), detail);
    }
    v
}

/// The statements CSV with its BOM; `places` are each statement's (district, town, village).
pub fn statements_csv(rows: &[(StatementRow, [String; 3])]) -> Result<Vec<u8>, csv::Error> {
    let mut out = BOM.as_bytes().to_vec();
    {
        let mut w = csv::Writer::from_writer(&mut out);
        w.write_record(CSV_COLUMNS)?;
        for (s, [district, town, village]) in rows {
            w.write_record([
                s.household.as_str(),
                district,
                town,
                village,
                &s.season,
                &kwh(s.offpeak_wh),
                &kwh(s.subsidised_wh),
                &kwh(s.cap_wh),
                s.cap_reached_on.as_deref().unwrap_or(""),
                &yuan(s.city_fen),
                &yuan(s.district_fen),
                &yuan(s.valley_charge_fen),
                &s.nights_actual.to_string(),
                &s.nights_estimated.to_string(),
                &s.nights_missing.to_string(),
                &s.flags.join(";"),
            ])?;
        }
        w.flush()?;
    }
    Ok(out)
}

/// The statements as a JSON array of statement objects.
pub fn statements_json(rows: &[(StatementRow, [String; 3])]) -> Value {
    Value::Array(rows.iter().map(|(s, _)| statement_json(s)).collect())
}
