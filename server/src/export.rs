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

/// The language of CSV headers (and of night qualities in the household CSV).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lang {
    /// English column names, the contract's (the default).
    #[default]
    En,
    /// Chinese column names for finance offices (区财政、镇政府).
    Zh,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "en" => Ok(Lang::En),
            "zh" => Ok(Lang::Zh),
            other => Err(format!("lang={other:?}: expected zh or en")),
        }
    }
}

/// [`CSV_COLUMNS`] in Chinese, in the same order.
pub const CSV_COLUMNS_ZH: [&str; 16] = [
    "户号",
    "区",
    "镇(乡)",
    "村",
    "采暖季",
    "低谷电量(千瓦时)",
    "补贴电量(千瓦时)",
    "补贴限额(千瓦时)",
    "达到限额日期",
    "市级补贴(元)",
    "区级补贴(元)",
    "低谷电费(元)",
    "实测夜数",
    "估算夜数",
    "缺失夜数",
    "标记",
];

/// Columns of the per-household statement CSV: one row per night, then a `total` row.
pub const HOUSEHOLD_CSV_COLUMNS: [&str; 13] = [
    "household",
    "district",
    "town",
    "village",
    "season",
    "night",
    "offpeak_kwh",
    "quality",
    "flags",
    "cumulative_kwh",
    "subsidised_kwh",
    "city_subsidy_yuan",
    "district_subsidy_yuan",
];

/// [`HOUSEHOLD_CSV_COLUMNS`] in Chinese, in the same order.
pub const HOUSEHOLD_CSV_COLUMNS_ZH: [&str; 13] = [
    "户号",
    "区",
    "镇(乡)",
    "村",
    "采暖季",
    "夜(起始日期)",
    "低谷电量(千瓦时)",
    "数据质量",
    "标记",
    "累计电量(千瓦时)",
    "补贴电量(千瓦时)",
    "市级补贴(元)",
    "区级补贴(元)",
];

/// The `night` cell of the household CSV's closing row.
pub fn total_label(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "total",
        Lang::Zh => "合计",
    }
}

/// A night's quality as the household CSV writes it.
pub fn quality_label(quality: &str, lang: Lang) -> &str {
    match (lang, quality) {
        (Lang::Zh, "actual") => "实测",
        (Lang::Zh, "estimated") => "估算",
        (Lang::Zh, "missing") => "缺失",
        (_, q) => q,
    }
}

/// The statements CSV with its BOM and English headers; `places` are each statement's
/// (district, town, village).
pub fn statements_csv(rows: &[(StatementRow, [String; 3])]) -> Result<Vec<u8>, csv::Error> {
    statements_csv_lang(rows, Lang::En)
}

/// One household's season as CSV with its BOM: a row per night (energy, quality, flags,
/// running total), then a closing row (`total`/`合计`) with the statement's figures.
pub fn household_csv(
    st: &StatementRow,
    place: &[String; 3],
    nights: &[NightRow],
    lang: Lang,
) -> Result<Vec<u8>, csv::Error> {
    let mut out = BOM.as_bytes().to_vec();
    {
        let mut w = csv::Writer::from_writer(&mut out);
        w.write_record(match lang {
            Lang::En => HOUSEHOLD_CSV_COLUMNS,
            Lang::Zh => HOUSEHOLD_CSV_COLUMNS_ZH,
        })?;
        let [district, town, village] = place;
        let mut cumulative = 0;
        for n in nights {
            cumulative += n.wh;
            w.write_record([
                st.household.as_str(),
                district,
                town,
                village,
                &st.season,
                &n.night,
                &kwh(n.wh),
                quality_label(&n.quality, lang),
                &n.flags.join(";"),
                &kwh(cumulative),
                "",
                "",
                "",
            ])?;
        }
        w.write_record([
            st.household.as_str(),
            district,
            town,
            village,
            &st.season,
            total_label(lang),
            &kwh(st.offpeak_wh),
            "",
            &st.flags.join(";"),
            &kwh(cumulative),
            &kwh(st.subsidised_wh),
            &yuan(st.city_fen),
            &yuan(st.district_fen),
        ])?;
        w.flush()?;
    }
    Ok(out)
}

/// The statement JSON with every night (`"each_night"`: the contract's night objects).
pub fn household_json(st: &StatementRow, nights: &[NightRow]) -> Value {
    let mut v = statement_json(st);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "each_night".into(),
            Value::Array(nights.iter().map(night_json).collect()),
        );
    }
    v
}

/// [`statements_csv`] with headers in `lang`.
pub fn statements_csv_lang(
    rows: &[(StatementRow, [String; 3])],
    lang: Lang,
) -> Result<Vec<u8>, csv::Error> {
    let mut out = BOM.as_bytes().to_vec();
    {
        let mut w = csv::Writer::from_writer(&mut out);
        w.write_record(match lang {
            Lang::En => CSV_COLUMNS,
            Lang::Zh => CSV_COLUMNS_ZH,
        })?;
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
