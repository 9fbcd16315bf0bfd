//! The PostgreSQL migrations are compiled into the binary by a macro that reads
//! `migrations/postgres` at build time; cargo cannot see that, so a migration added or
//! edited would leave an incremental build with the old set. Naming the directory here
//! makes cargo rebuild when anything in it changes.

fn main() {
    println!("cargo:rerun-if-changed=migrations/postgres");
}
