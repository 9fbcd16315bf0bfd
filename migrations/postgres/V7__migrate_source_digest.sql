-- What each part of a `hartslag migrate --from-sled` copy held: the number of rows read
-- and an order-independent SHA-256 sum over them, "<rows>:<hex>". A later run reads the
-- directory's part again and refuses to report "nothing to copy" when it no longer
-- matches: the directory was used again after it was copied, and the database lacks
-- what was written since. NULL on parts copied before this column existed (not checked).
ALTER TABLE hartslag_migrations_from_sled ADD COLUMN digest text;
