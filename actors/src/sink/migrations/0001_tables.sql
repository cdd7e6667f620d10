-- Warden's PostgreSQL sink, version 1: the typed tables of the upstream records and `records`
-- for everything else. Runs with search_path set to the sink's schema (schema.rs). Each table's
-- primary key comes from the record key (docs/upstreams.md); `updated_at` is when Warden saw the
-- value change, so it moves only when the data does.

CREATE TABLE sec_filings (
    cik                     bigint      NOT NULL,
    accession               text        NOT NULL,
    ticker                  text,
    company_name            text,
    form                    text,
    filing_date             date,
    report_date             date,
    acceptance_time         timestamptz,
    primary_document        text,
    primary_doc_description text,
    items                   text,
    size                    bigint,
    raw                     jsonb       NOT NULL,
    fetched_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    PRIMARY KEY (cik, accession)
);
CREATE INDEX sec_filings_form_date ON sec_filings (form, filing_date);

CREATE TABLE sec_facts (
    cik          bigint      NOT NULL,
    concept      text        NOT NULL,
    period_end   date        NOT NULL,
    fact_no      integer     NOT NULL,
    taxonomy     text,
    unit         text,
    period_start date,
    value        numeric,
    fy           integer,
    fp           text,
    form         text,
    filed        date,
    accn         text,
    frame        text,
    label        text,
    entity_name  text,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (cik, concept, period_end, fact_no)
);

CREATE TABLE price_bars (
    ticker     text        NOT NULL,
    "interval" text        NOT NULL,
    period     text        NOT NULL,
    ts         timestamptz,
    open       numeric,
    high       numeric,
    low        numeric,
    close      numeric,
    adj_close  numeric,
    volume     bigint,
    currency   text,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (ticker, "interval", period)
);
CREATE INDEX price_bars_ts ON price_bars (ticker, ts);

CREATE TABLE av_overview (
    symbol                text        NOT NULL PRIMARY KEY,
    name                  text,
    asset_type            text,
    cik                   bigint,
    exchange              text,
    currency              text,
    country               text,
    sector                text,
    industry              text,
    fiscal_year_end       text,
    latest_quarter        date,
    market_capitalization numeric,
    ebitda                numeric,
    pe_ratio              numeric,
    peg_ratio             numeric,
    book_value            numeric,
    dividend_per_share    numeric,
    dividend_yield        numeric,
    eps                   numeric,
    revenue_ttm           numeric,
    gross_profit_ttm      numeric,
    profit_margin         numeric,
    beta                  numeric,
    week52_high           numeric,
    week52_low            numeric,
    shares_outstanding    numeric,
    raw                   jsonb       NOT NULL,
    updated_at            timestamptz NOT NULL
);

CREATE TABLE av_income_statements (
    symbol                             text        NOT NULL,
    fiscal_date_ending                 date        NOT NULL,
    reported_currency                  text,
    total_revenue                      numeric,
    cost_of_revenue                    numeric,
    gross_profit                       numeric,
    operating_expenses                 numeric,
    operating_income                   numeric,
    research_and_development           numeric,
    selling_general_and_administrative numeric,
    interest_income                    numeric,
    interest_expense                   numeric,
    income_before_tax                  numeric,
    income_tax_expense                 numeric,
    ebit                               numeric,
    ebitda                             numeric,
    depreciation_and_amortization      numeric,
    net_income                         numeric,
    raw                                jsonb       NOT NULL,
    updated_at                         timestamptz NOT NULL,
    PRIMARY KEY (symbol, fiscal_date_ending)
);

CREATE TABLE records (
    key        text        NOT NULL PRIMARY KEY,
    value      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL
);
