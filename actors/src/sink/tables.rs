//! The PostgreSQL tables the sink writes, as data: each table's columns with their SQL types and
//! its primary key, and the statements built from them. One generic upsert serves every table:
//! the batch's rows arrive as one `text[]` parameter per column, `unnest` turns them into rows,
//! each column is cast to its type in SQL, and
//!
//! ```sql
//! ON CONFLICT (key) DO UPDATE SET … WHERE (t.a, t.b, …) IS DISTINCT FROM (EXCLUDED.a, …)
//! ```
//!
//! makes the upsert idempotent: shipping a row again that holds the same values changes nothing
//! (no new row version, `updated_at` untouched), a changed value updates the row. Text is what
//! crosses the wire because the values were already checked by `rows.rs` (every date a date,
//! every number a number), so the casts cannot fail, and because one parameter type for every
//! column keeps this file free of per-type plumbing. Identifiers are quoted (`"interval"` is a
//! keyword); the schema name is a checked plain identifier.

/// One table: its name, its columns (name, SQL type) in the order rows carry them, and the
/// columns of its primary key.
#[derive(Debug)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// `(column, SQL type)`, in row order.
    pub columns: &'static [(&'static str, &'static str)],
    /// The primary key's columns.
    pub key: &'static [&'static str],
}

/// The tables, indexed by [`TableId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableId {
    /// `sec/filings/{cik}/{accession}`.
    SecFilings,
    /// `sec/facts/{cik}/{concept}/{end}`: one row per fact.
    SecFacts,
    /// `yahoo/chart/{ticker}/{interval}/{date}`.
    PriceBars,
    /// `alphavantage/overview/{symbol}`.
    AvOverview,
    /// `alphavantage/income/{symbol}/{fiscalDateEnding}`.
    AvIncome,
    /// Every other record (exec and Rust tasks), and any record whose key does not parse.
    Records,
}

impl TableId {
    /// Every table, in the order a batch writes them.
    pub const ALL: [TableId; 6] = [
        TableId::SecFilings,
        TableId::SecFacts,
        TableId::PriceBars,
        TableId::AvOverview,
        TableId::AvIncome,
        TableId::Records,
    ];

    /// The table's description.
    pub fn table(self) -> &'static Table {
        match self {
            TableId::SecFilings => &SEC_FILINGS,
            TableId::SecFacts => &SEC_FACTS,
            TableId::PriceBars => &PRICE_BARS,
            TableId::AvOverview => &AV_OVERVIEW,
            TableId::AvIncome => &AV_INCOME,
            TableId::Records => &RECORDS,
        }
    }

    /// The table's name (the `table` label of `warden_sink_rows_total`).
    pub fn name(self) -> &'static str {
        self.table().name
    }
}

const SEC_FILINGS: Table = Table {
    name: "sec_filings",
    columns: &[
        ("cik", "bigint"),
        ("accession", "text"),
        ("ticker", "text"),
        ("company_name", "text"),
        ("form", "text"),
        ("filing_date", "date"),
        ("report_date", "date"),
        ("acceptance_time", "timestamptz"),
        ("primary_document", "text"),
        ("primary_doc_description", "text"),
        ("items", "text"),
        ("size", "bigint"),
        ("raw", "jsonb"),
        ("fetched_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ],
    key: &["cik", "accession"],
};

const SEC_FACTS: Table = Table {
    name: "sec_facts",
    columns: &[
        ("cik", "bigint"),
        ("concept", "text"),
        ("period_end", "date"),
        ("fact_no", "integer"),
        ("taxonomy", "text"),
        ("unit", "text"),
        ("period_start", "date"),
        ("value", "numeric"),
        ("fy", "integer"),
        ("fp", "text"),
        ("form", "text"),
        ("filed", "date"),
        ("accn", "text"),
        ("frame", "text"),
        ("label", "text"),
        ("entity_name", "text"),
        ("updated_at", "timestamptz"),
    ],
    key: &["cik", "concept", "period_end", "fact_no"],
};

const PRICE_BARS: Table = Table {
    name: "price_bars",
    columns: &[
        ("ticker", "text"),
        ("interval", "text"),
        ("period", "text"),
        ("ts", "timestamptz"),
        ("open", "numeric"),
        ("high", "numeric"),
        ("low", "numeric"),
        ("close", "numeric"),
        ("adj_close", "numeric"),
        ("volume", "bigint"),
        ("currency", "text"),
        ("updated_at", "timestamptz"),
    ],
    key: &["ticker", "interval", "period"],
};

const AV_OVERVIEW: Table = Table {
    name: "av_overview",
    columns: &[
        ("symbol", "text"),
        ("name", "text"),
        ("asset_type", "text"),
        ("cik", "bigint"),
        ("exchange", "text"),
        ("currency", "text"),
        ("country", "text"),
        ("sector", "text"),
        ("industry", "text"),
        ("fiscal_year_end", "text"),
        ("latest_quarter", "date"),
        ("market_capitalization", "numeric"),
        ("ebitda", "numeric"),
        ("pe_ratio", "numeric"),
        ("peg_ratio", "numeric"),
        ("book_value", "numeric"),
        ("dividend_per_share", "numeric"),
        ("dividend_yield", "numeric"),
        ("eps", "numeric"),
        ("revenue_ttm", "numeric"),
        ("gross_profit_ttm", "numeric"),
        ("profit_margin", "numeric"),
        ("beta", "numeric"),
        ("week52_high", "numeric"),
        ("week52_low", "numeric"),
        ("shares_outstanding", "numeric"),
        ("raw", "jsonb"),
        ("updated_at", "timestamptz"),
    ],
    key: &["symbol"],
};

const AV_INCOME: Table = Table {
    name: "av_income_statements",
    columns: &[
        ("symbol", "text"),
        ("fiscal_date_ending", "date"),
        ("reported_currency", "text"),
        ("total_revenue", "numeric"),
        ("cost_of_revenue", "numeric"),
        ("gross_profit", "numeric"),
        ("operating_expenses", "numeric"),
        ("operating_income", "numeric"),
        ("research_and_development", "numeric"),
        ("selling_general_and_administrative", "numeric"),
        ("interest_income", "numeric"),
        ("interest_expense", "numeric"),
        ("income_before_tax", "numeric"),
        ("income_tax_expense", "numeric"),
        ("ebit", "numeric"),
        ("ebitda", "numeric"),
        ("depreciation_and_amortization", "numeric"),
        ("net_income", "numeric"),
        ("raw", "jsonb"),
        ("updated_at", "timestamptz"),
    ],
    key: &["symbol", "fiscal_date_ending"],
};

const RECORDS: Table = Table {
    name: "records",
    columns: &[
        ("key", "text"),
        ("value", "jsonb"),
        ("updated_at", "timestamptz"),
    ],
    key: &["key"],
};

/// Columns never compared by the upsert: when only they differ, the row is the same data.
const BOOKKEEPING: &[&str] = &["updated_at", "fetched_at"];

/// `"name"`.
fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

fn joined(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// The idempotent upsert of `table` in `schema` (see the module doc); its parameters are one
/// `text[]` per column, in column order.
pub fn upsert_sql(schema: &str, table: &Table) -> String {
    let names = || table.columns.iter().map(|(c, _)| quoted(c));
    let params = joined((1..=table.columns.len()).map(|i| format!("${i}::text[]")));
    let casts = joined(
        table
            .columns
            .iter()
            .map(|(c, t)| format!("{}::{t}", quoted(c))),
    );
    let data = || {
        table
            .columns
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| !table.key.contains(c))
    };
    let set = joined(data().map(|c| format!("{0} = EXCLUDED.{0}", quoted(c))));
    let compared = || data().filter(|c| !BOOKKEEPING.contains(c));
    format!(
        "INSERT INTO {schema}.{name} AS t ({cols}) SELECT {casts} FROM unnest({params}) AS u({cols}) \
         ON CONFLICT ({key}) DO UPDATE SET {set} WHERE ({old}) IS DISTINCT FROM ({new})",
        name = table.name,
        cols = joined(names()),
        key = joined(table.key.iter().map(|c| quoted(c))),
        old = joined(compared().map(|c| format!("t.{}", quoted(c)))),
        new = joined(compared().map(|c| format!("EXCLUDED.{}", quoted(c)))),
    )
}

/// A plain multi-row INSERT of `table` (no conflict handling): the benchmark's ceiling, the
/// sink's statement with nothing around it. Same parameters as [`upsert_sql`].
pub fn insert_sql(schema: &str, table: &Table) -> String {
    let names = joined(table.columns.iter().map(|(c, _)| quoted(c)));
    let params = joined((1..=table.columns.len()).map(|i| format!("${i}::text[]")));
    let casts = joined(
        table
            .columns
            .iter()
            .map(|(c, t)| format!("{}::{t}", quoted(c))),
    );
    format!(
        "INSERT INTO {schema}.{name} ({names}) SELECT {casts} FROM unnest({params}) AS u({names})",
        name = table.name
    )
}

/// Removes the facts of a (cik, concept, period end) record beyond its current count, after the
/// record shrank. Parameters: `text[]` of cik, concept, period end and count.
pub fn trim_facts_sql(schema: &str) -> String {
    format!(
        "DELETE FROM {schema}.sec_facts f USING unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
         AS u(cik, concept, period_end, n) WHERE f.cik = u.cik::bigint AND f.concept = u.concept \
         AND f.period_end = u.period_end::date AND f.fact_no >= u.n::integer"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that the upsert inserts every column, conflicts on the key, updates the other
    /// columns and compares only the data columns (not `updated_at`).
    #[test]
    fn upsert_compares_data_columns_only() {
        let sql = upsert_sql("warden", TableId::Records.table());
        assert_eq!(
            sql,
            "INSERT INTO warden.records AS t (\"key\", \"value\", \"updated_at\") SELECT \
             \"key\"::text, \"value\"::jsonb, \"updated_at\"::timestamptz FROM unnest($1::text[], \
             $2::text[], $3::text[]) AS u(\"key\", \"value\", \"updated_at\") ON CONFLICT (\"key\") \
             DO UPDATE SET \"value\" = EXCLUDED.\"value\", \"updated_at\" = EXCLUDED.\"updated_at\" \
             WHERE (t.\"value\") IS DISTINCT FROM (EXCLUDED.\"value\")"
        );
    }

    /// Ensures that every table's key columns are among its columns and every table has an
    /// `updated_at`.
    #[test]
    fn keys_are_columns() {
        for id in TableId::ALL {
            let t = id.table();
            for k in t.key {
                assert!(t.columns.iter().any(|(c, _)| c == k), "{}.{k}", t.name);
            }
            assert!(
                t.columns.iter().any(|(c, _)| *c == "updated_at"),
                "{}",
                t.name
            );
        }
    }
}
