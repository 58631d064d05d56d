-- Loyalty stamps: v2 of coffee.customers-key/-value. NOT NULL with a literal DEFAULT, so the
-- Avro field gets `"default": 0` and the change is compatible in both directions (FULL): a
-- reader of v2 reads v1 events with stamps = 0, a reader of v1 ignores the field.
-- Apply to a running leader with:
--   producer migrate --leader shop.db --ddl shop/src/sql/0002_customer_stamps.sql --registry URL --topic-prefix coffee
ALTER TABLE customers ADD COLUMN stamps INTEGER NOT NULL DEFAULT 0;
