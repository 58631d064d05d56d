-- The coffee shop's leader schema as first shipped: the contracts' v1
-- (schemas/contracts/coffee.*/v1.avsc). Later changes are migrations next to this file.
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, favourite TEXT NOT NULL, visits INTEGER NOT NULL DEFAULT 0);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, coffee TEXT NOT NULL, ordered_at REAL NOT NULL);
