//! Scenario and property tests of the engine, built from a simulated true power curve.

mod explain;
mod judged;
mod props;
mod reads;
mod registry;
mod season;
mod sim;
mod thin;

/// One engine per thread: it must be movable across threads, and the frame shareable.
#[test]
fn engine_is_send_and_the_frame_is_sync() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<crate::engine::Engine>();
    sync::<crate::engine::SeasonFrame>();
    send::<crate::engine::HouseholdSeason>();
}
