//! From stored records to table rows, without PostgreSQL: pure, so every rule is unit tested.
//!
//! - The table follows the record's KEY (docs/upstreams.md, "Records"), and the primary key
//!   columns come from the key's parts, never from the value: two records never map to one
//!   row, so one batch never upserts a row twice (which PostgreSQL refuses) and each record
//!   owns its rows. A key of a known shape whose parts do not parse (a CIK that is not a
//!   number, an end that is not a date) or whose value is not an object goes to `records`
//!   like any exec task's record, rather than failing.
//! - Values are checked here so that the SQL casts cannot fail: a number is a JSON number or a
//!   decimal string, anything else (`"None"`, `"-"`, `""`, `"N/A"`) is NULL; a date is
//!   `YYYY-MM-DD` of a real day; a timestamp is RFC 3339. Text loses NUL characters, which
//!   PostgreSQL's `text` and `jsonb` cannot hold.
//! - A `sec/facts` record holds every fact of its (concept, period end): one row per fact,
//!   numbered, plus a trim of facts beyond the count (a record that shrank).

use crate::postgres::{jsonb_text, pg_text};
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::tables::TableId;
use crate::store::journal::StoredRecord;

/// What a missing field reads as.
static NULL: Value = Value::Null;

/// One row: a value per column of its table, as text (NULL when absent).
pub type Row = Vec<Option<String>>;

/// The rows of a batch of records, grouped by table, and the fact trims.
#[derive(Debug, Default, PartialEq)]
pub struct Rows {
    /// Rows per table.
    pub tables: BTreeMap<TableId, Vec<Row>>,
    /// `[cik, concept, period_end, count]` of each facts record.
    pub fact_trims: Vec<[String; 4]>,
}

impl Rows {
    /// Adds the rows of `record`.
    pub fn add(&mut self, record: &StoredRecord) {
        let at = timestamp_ms(record.updated_at);
        let parts: Vec<&str> = record.key.split('/').collect();
        let object = record.value.as_object();
        let single = match (parts.as_slice(), object) {
            (["sec", "filings", cik, accession], Some(v)) => {
                filing(cik, accession, v, &record.value, &at).map(|r| (TableId::SecFilings, r))
            }
            (["sec", "facts", cik, concept, end], Some(v)) => {
                if self.facts(cik, concept, end, v, &at).is_some() {
                    return;
                }
                None
            }
            (["yahoo", "chart", ticker, interval, period], Some(v)) => {
                Some((TableId::PriceBars, bar(ticker, interval, period, v, &at)))
            }
            (["alphavantage", "overview", symbol], Some(v)) => {
                Some((TableId::AvOverview, overview(symbol, v, &record.value, &at)))
            }
            (["alphavantage", "income", symbol, end], Some(v)) => {
                income(symbol, end, v, &record.value, &at).map(|r| (TableId::AvIncome, r))
            }
            _ => None,
        };
        match single {
            Some((table, row)) => self.push(table, row),
            None => {
                let row = vec![
                    Some(pg_text(&record.key)),
                    Some(jsonb_text(&record.value)),
                    at,
                ];
                self.push(TableId::Records, row);
            }
        }
    }

    /// Fills `sec_filings.ticker` where the record had none, from `ticker_of(cik)` (SEC's
    /// ticker map: the filings themselves carry only the CIK).
    pub fn fill_tickers(&mut self, ticker_of: impl Fn(u64) -> Option<String>) {
        for row in self
            .tables
            .get_mut(&TableId::SecFilings)
            .into_iter()
            .flatten()
        {
            if row[2].is_none() {
                let cik = row[0].as_deref().and_then(|c| c.parse().ok());
                row[2] = cik.and_then(&ticker_of);
            }
        }
    }

    /// Rows in all.
    pub fn len(&self) -> usize {
        self.tables.values().map(Vec::len).sum()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.fact_trims.is_empty()
    }

    fn push(&mut self, table: TableId, row: Row) {
        self.tables.entry(table).or_default().push(row);
    }

    fn facts(
        &mut self,
        cik: &str,
        concept: &str,
        end: &str,
        v: &Map<String, Value>,
        at: &Option<String>,
    ) -> Option<()> {
        let cik = cik.parse::<u64>().ok()?.to_string();
        let end = date(&Value::String(end.into()))?;
        let facts = v.get("facts")?.as_array()?;
        let (label, entity) = (text(v.get("label")), text(v.get("entityName")));
        for (n, fact) in facts.iter().enumerate() {
            let f = |k: &str| fact.get(k).unwrap_or(&NULL);
            self.push(
                TableId::SecFacts,
                vec![
                    Some(cik.clone()),
                    Some(pg_text(concept)),
                    Some(end.clone()),
                    Some(n.to_string()),
                    text(fact.get("taxonomy")),
                    text(fact.get("unit")),
                    date(f("start")),
                    numeric(f("val")),
                    integer(f("fy"), i64::from(i32::MIN), i64::from(i32::MAX)),
                    text(fact.get("fp")),
                    text(fact.get("form")),
                    date(f("filed")),
                    text(fact.get("accn")),
                    text(fact.get("frame")),
                    label.clone(),
                    entity.clone(),
                    at.clone(),
                ],
            );
        }
        self.fact_trims
            .push([cik, pg_text(concept), end, facts.len().to_string()]);
        Some(())
    }
}

fn filing(
    cik: &str,
    accession: &str,
    v: &Map<String, Value>,
    raw: &Value,
    at: &Option<String>,
) -> Option<Row> {
    let cik = cik.parse::<u64>().ok()?.to_string();
    let f = |k: &str| v.get(k).unwrap_or(&NULL);
    Some(vec![
        Some(cik),
        Some(pg_text(accession)),
        text(v.get("ticker")),
        text(v.get("name")),
        text(v.get("form")),
        date(f("filingDate")),
        date(f("reportDate")),
        timestamp(f("acceptanceDateTime")),
        text(v.get("primaryDocument")),
        text(v.get("primaryDocDescription")),
        text(v.get("items")),
        integer(f("size"), 0, i64::MAX),
        Some(jsonb_text(raw)),
        at.clone(),
        at.clone(),
    ])
}

fn bar(
    ticker: &str,
    interval: &str,
    period: &str,
    v: &Map<String, Value>,
    at: &Option<String>,
) -> Row {
    let f = |k: &str| v.get(k).unwrap_or(&NULL);
    let ts = f("timestamp")
        .as_i64()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        .filter(|t| YEARS.contains(&t.year()))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    vec![
        Some(pg_text(ticker)),
        Some(pg_text(interval)),
        Some(pg_text(period)),
        ts,
        numeric(f("open")),
        numeric(f("high")),
        numeric(f("low")),
        numeric(f("close")),
        numeric(f("adjclose")),
        integer(f("volume"), i64::MIN, i64::MAX),
        text(v.get("currency")),
        at.clone(),
    ]
}

/// Alpha Vantage's OVERVIEW fields that get typed columns, in column order after `symbol`
/// (the key's) and before `raw`: (field, kind).
const OVERVIEW_FIELDS: &[(&str, Kind)] = &[
    ("Name", Kind::Text),
    ("AssetType", Kind::Text),
    ("CIK", Kind::Cik),
    ("Exchange", Kind::Text),
    ("Currency", Kind::Text),
    ("Country", Kind::Text),
    ("Sector", Kind::Text),
    ("Industry", Kind::Text),
    ("FiscalYearEnd", Kind::Text),
    ("LatestQuarter", Kind::Date),
    ("MarketCapitalization", Kind::Numeric),
    ("EBITDA", Kind::Numeric),
    ("PERatio", Kind::Numeric),
    ("PEGRatio", Kind::Numeric),
    ("BookValue", Kind::Numeric),
    ("DividendPerShare", Kind::Numeric),
    ("DividendYield", Kind::Numeric),
    ("EPS", Kind::Numeric),
    ("RevenueTTM", Kind::Numeric),
    ("GrossProfitTTM", Kind::Numeric),
    ("ProfitMargin", Kind::Numeric),
    ("Beta", Kind::Numeric),
    ("52WeekHigh", Kind::Numeric),
    ("52WeekLow", Kind::Numeric),
    ("SharesOutstanding", Kind::Numeric),
];

/// The quarterly report lines that get typed columns, in column order after `symbol`,
/// `fiscal_date_ending` and `reported_currency`.
const INCOME_FIELDS: &[&str] = &[
    "totalRevenue",
    "costOfRevenue",
    "grossProfit",
    "operatingExpenses",
    "operatingIncome",
    "researchAndDevelopment",
    "sellingGeneralAndAdministrative",
    "interestIncome",
    "interestExpense",
    "incomeBeforeTax",
    "incomeTaxExpense",
    "ebit",
    "ebitda",
    "depreciationAndAmortization",
    "netIncome",
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Numeric,
    Date,
    Cik,
}

fn overview(symbol: &str, v: &Map<String, Value>, raw: &Value, at: &Option<String>) -> Row {
    let mut row = vec![Some(pg_text(symbol))];
    for (field, kind) in OVERVIEW_FIELDS {
        let value = v.get(*field).unwrap_or(&NULL);
        row.push(match kind {
            Kind::Text => text(Some(value)),
            Kind::Numeric => numeric(value),
            Kind::Date => date(value),
            Kind::Cik => integer(value, 0, i64::MAX),
        });
    }
    row.push(Some(jsonb_text(raw)));
    row.push(at.clone());
    row
}

fn income(
    symbol: &str,
    end: &str,
    v: &Map<String, Value>,
    raw: &Value,
    at: &Option<String>,
) -> Option<Row> {
    let end = date(&Value::String(end.into()))?;
    let mut row = vec![
        Some(pg_text(symbol)),
        Some(end),
        text(v.get("reportedCurrency")),
    ];
    for field in INCOME_FIELDS {
        row.push(numeric(v.get(*field).unwrap_or(&NULL)));
    }
    row.push(Some(jsonb_text(raw)));
    row.push(at.clone());
    Some(row)
}

// ===== Values =====

/// A string as it is, a number or a boolean as written; null, empty and the upstreams' "None"
/// placeholder as NULL.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if s.is_empty() || s == "None" => None,
        Value::String(s) => Some(pg_text(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A decimal for a `numeric` column: a JSON number or a string that is one; anything else NULL.
pub fn numeric(v: &Value) -> Option<String> {
    let s = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    is_decimal(&s).then_some(s)
}

/// An integer within `min ..= max`, from a JSON number (a float with no fraction too) or a
/// string; anything else NULL.
fn integer(v: &Value, min: i64, max: i64) -> Option<String> {
    let n = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }?;
    (min..=max).contains(&n).then(|| n.to_string())
}

/// Years PostgreSQL reads back as written: chrono also takes year 0 and negative years, which
/// `date` refuses or would need a `BC` suffix.
const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// A `YYYY-MM-DD` string naming a real day of years 1 to 9999, else NULL.
fn date(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|d| YEARS.contains(&d.year()))
        .map(|d| d.format("%Y-%m-%d").to_string())
}

/// An RFC 3339 timestamp, else NULL.
fn timestamp(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .filter(|t| YEARS.contains(&t.year()))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Unix milliseconds as RFC 3339 (UTC).
fn timestamp_ms(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// `[+-]digits[.digits][e[+-]digits]` with at least one digit, at most 64 characters and an
/// exponent of at most three digits: what `numeric` takes without overflowing.
fn is_decimal(s: &str) -> bool {
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let unsigned = |t: &'_ str| t.strip_prefix(['+', '-']).unwrap_or(t).to_string();
    if s.is_empty() || s.len() > 64 {
        return false;
    }
    let body = unsigned(s);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m.to_string(), Some(unsigned(e))),
        None => (body.clone(), None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa.as_str(), ""));
    let mantissa_ok = !(int.is_empty() && frac.is_empty()) && digits(int) && digits(frac);
    let exponent_ok = exponent.is_none_or(|e| !e.is_empty() && e.len() <= 3 && digits(&e));
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sink::tables::TableId;

    fn rows_of(key: &str, value: Value) -> Rows {
        let mut rows = Rows::default();
        rows.add(&StoredRecord {
            key: key.into(),
            value,
            updated_at: 1_764_000_000_000,
        });
        rows
    }

    fn only(rows: &Rows, table: TableId) -> Row {
        assert_eq!(rows.tables.len(), 1, "{rows:?}");
        let all = &rows.tables[&table];
        assert_eq!(all.len(), 1, "{rows:?}");
        all[0].clone()
    }

    fn column(table: TableId, row: &Row, name: &str) -> Option<String> {
        let i = table
            .table()
            .columns
            .iter()
            .position(|(c, _)| *c == name)
            .unwrap();
        row[i].clone()
    }

    /// Ensures that every row has exactly its table's number of columns.
    #[test]
    fn rows_fit_their_tables() {
        let cases = [
            ("sec/filings/1/0001-25-1", json!({"form": "10-K"})),
            (
                "sec/facts/1/Revenues/2025-03-31",
                json!({"facts": [{"val": 1}, {"val": 2}]}),
            ),
            ("yahoo/chart/IBM/1d/2025-11-24", json!({"close": 1.5})),
            ("alphavantage/overview/IBM", json!({"Name": "IBM"})),
            (
                "alphavantage/income/IBM/2025-09-30",
                json!({"netIncome": "5"}),
            ),
            ("analysis/1", json!([1, 2])),
        ];
        for (key, value) in cases {
            let rows = rows_of(key, value);
            for (table, all) in &rows.tables {
                for row in all {
                    assert_eq!(row.len(), table.table().columns.len(), "{key}");
                }
            }
        }
    }

    /// Ensures that the upstreams' placeholders for a missing number become NULL, and real
    /// numbers (strings or JSON numbers) pass as they are.
    #[test]
    fn numbers_and_placeholders() {
        for bad in [
            "None", "-", "", "N/A", "1.2.3", "1e", "e5", "0x10", "1e9999", "NaN",
        ] {
            assert_eq!(numeric(&json!(bad)), None, "{bad}");
        }
        for good in ["0", "-12.50", "3.", ".5", "1.5E+3", "+7"] {
            assert_eq!(numeric(&json!(good)).as_deref(), Some(good), "{good}");
        }
        assert_eq!(numeric(&json!(1.25)).as_deref(), Some("1.25"));
        assert_eq!(numeric(&json!(null)), None);
        let row = only(
            &rows_of(
                "alphavantage/overview/IBM",
                json!({"PERatio": "None", "EPS": "3.10", "DividendYield": "-", "CIK": "51143", "LatestQuarter": "2025-02-30"}),
            ),
            TableId::AvOverview,
        );
        let t = TableId::AvOverview;
        assert_eq!(column(t, &row, "pe_ratio"), None);
        assert_eq!(column(t, &row, "eps").as_deref(), Some("3.10"));
        assert_eq!(column(t, &row, "dividend_yield"), None);
        assert_eq!(column(t, &row, "cik").as_deref(), Some("51143"));
        assert_eq!(column(t, &row, "latest_quarter"), None, "no 30 February");
        for not_a_date in ["0000-01-01", "-0001-01-01", "2025-1-1x", "yesterday"] {
            assert_eq!(date(&json!(not_a_date)), None, "{not_a_date}");
        }
    }

    /// Ensures that a filing's typed columns come from the key and the value, its raw JSON is
    /// kept, and both times are the record's `updated_at`.
    #[test]
    fn a_filing() {
        let row = only(
            &rows_of(
                "sec/filings/1364954/0001364954-25-000010",
                json!({"form": "10-K", "filingDate": "2025-02-14", "reportDate": "", "name": "Chegg",
                       "acceptanceDateTime": "2025-02-14T16:05:00.000Z", "size": 250000,
                       "primaryDocument": "chgg-20241231.htm"}),
            ),
            TableId::SecFilings,
        );
        let t = TableId::SecFilings;
        assert_eq!(column(t, &row, "cik").as_deref(), Some("1364954"));
        assert_eq!(
            column(t, &row, "accession").as_deref(),
            Some("0001364954-25-000010")
        );
        assert_eq!(
            column(t, &row, "filing_date").as_deref(),
            Some("2025-02-14")
        );
        assert_eq!(column(t, &row, "report_date"), None);
        assert_eq!(column(t, &row, "company_name").as_deref(), Some("Chegg"));
        assert_eq!(
            column(t, &row, "acceptance_time").as_deref(),
            Some("2025-02-14T16:05:00.000Z")
        );
        assert_eq!(column(t, &row, "size").as_deref(), Some("250000"));
        assert_eq!(
            column(t, &row, "fetched_at").as_deref(),
            Some("2025-11-24T16:00:00.000Z")
        );
        assert!(column(t, &row, "raw")
            .unwrap()
            .contains("chgg-20241231.htm"));
    }

    /// Ensures that a filing without a ticker gets its CIK's from the map, and one with a
    /// ticker keeps it.
    #[test]
    fn filings_get_tickers_from_the_map() {
        let mut rows = rows_of("sec/filings/51143/0001-25-1", json!({"form": "10-K"}));
        rows.add(&StoredRecord {
            key: "sec/filings/1/0001-25-2".into(),
            value: json!({"ticker": "OWN"}),
            updated_at: 0,
        });
        rows.fill_tickers(|cik| (cik == 51143).then(|| "IBM".to_string()));
        let t = TableId::SecFilings;
        let tickers: Vec<_> = rows.tables[&t]
            .iter()
            .map(|r| column(t, r, "ticker"))
            .collect();
        assert_eq!(tickers, [Some("IBM".into()), Some("OWN".into())]);
    }

    /// Ensures that a facts record becomes one numbered row per fact plus a trim at its count.
    #[test]
    fn facts_are_numbered_and_trimmed() {
        let rows = rows_of(
            "sec/facts/51143/Revenues/2025-06-30",
            json!({"label": "Revenues", "entityName": "IBM", "facts": [
                {"taxonomy": "us-gaap", "unit": "USD", "val": 100, "start": "2025-04-01", "fy": 2025, "fp": "Q2", "form": "10-Q", "filed": "2025-08-04"},
                {"taxonomy": "us-gaap", "unit": "USD", "val": "None", "fy": "x"}
            ]}),
        );
        let all = &rows.tables[&TableId::SecFacts];
        let t = TableId::SecFacts;
        assert_eq!(all.len(), 2);
        assert_eq!(column(t, &all[0], "fact_no").as_deref(), Some("0"));
        assert_eq!(column(t, &all[0], "value").as_deref(), Some("100"));
        assert_eq!(
            column(t, &all[0], "period_start").as_deref(),
            Some("2025-04-01")
        );
        assert_eq!(column(t, &all[1], "value"), None);
        assert_eq!(column(t, &all[1], "fy"), None);
        assert_eq!(
            rows.fact_trims,
            [["51143", "Revenues", "2025-06-30", "2"].map(String::from)]
        );
    }

    /// Ensures that a bar gets its time from the epoch seconds and its key parts from the key.
    #[test]
    fn a_price_bar() {
        let row = only(
            &rows_of(
                "yahoo/chart/CHGG/1d/2025-11-24",
                json!({"timestamp": 1763994600, "open": 1.5, "close": 1.55, "volume": 1000, "adjclose": null}),
            ),
            TableId::PriceBars,
        );
        let t = TableId::PriceBars;
        assert_eq!(
            column(t, &row, "ts").as_deref(),
            Some("2025-11-24T14:30:00Z")
        );
        assert_eq!(column(t, &row, "interval").as_deref(), Some("1d"));
        assert_eq!(column(t, &row, "period").as_deref(), Some("2025-11-24"));
        assert_eq!(column(t, &row, "volume").as_deref(), Some("1000"));
        assert_eq!(column(t, &row, "adj_close"), None);
    }

    /// Ensures that keys of a known shape that do not parse, values that are not objects and
    /// unknown keys all go to `records`, and NULs never reach PostgreSQL.
    #[test]
    fn everything_else_goes_to_records() {
        for key in [
            "sec/filings/notacik/1",
            "sec/facts/1/Revenues/soon",
            "alphavantage/income/IBM/yesterday",
            "analysis/1364954",
        ] {
            let row = only(&rows_of(key, json!({"a": 1})), TableId::Records);
            assert_eq!(row[0].as_deref(), Some(key));
        }
        only(
            &rows_of("yahoo/chart/IBM/1d/2025-11-24", json!(5)),
            TableId::Records,
        );
        let row = only(&rows_of("x\0y", json!({"k\0": "v\0"})), TableId::Records);
        assert_eq!(row[0].as_deref(), Some("x\u{FFFD}y"));
        assert_eq!(row[1].as_deref(), Some("{\"k\u{FFFD}\":\"v\u{FFFD}\"}"));
    }
}
