//! Smoke: a PostgreSQL store opens, migrates, and answers.

mod pg_support;

use qingnuan_server::store::{Backend, Store};

#[tokio::test]
async fn opens_and_migrates_twice() {
    let pg = pg_support::PgServer::start(false);
    let store = Store::open(&pg.url()).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    store.ping().await.unwrap();
    assert_eq!(store.registry_version().await.unwrap(), 0);
    drop(store);
    let store = Store::open(&pg.url()).await.unwrap();
    assert_eq!(store.reading_counts().await.unwrap(), (0, 0));
}
