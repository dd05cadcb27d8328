//! Bulk revoke in a real headless Chromium (Debian's chromium + chromium-driver): tick one
//! row with the keyboard and one with a click, "Revoke selected", give the reason, the code
//! and the confirmation, watch the progress page reach done, and find both rows revoked and
//! the others untouched. Every wait is on a page condition with a generous deadline.

#![allow(clippy::unwrap_used)]

mod support;

use fantoccini::Locator;
use octomil_testkit::browser::Browser;
use support::Device;
use support::ui::{
    ENTER, TAB, checked, click, count, focused_id, press, shots, sign_in, state_of, tab_to,
    wait_text,
};

#[tokio::test]
async fn bulk_revoke_of_a_selection_in_a_real_browser() {
    let Some(b) = Browser::start("bulk_revoke_of_a_selection_in_a_real_browser").await else {
        return;
    };
    let env = support::start().await;
    env.relax_limits().await;
    let ids = ["unit-1", "unit-2", "unit-3", "unit-4"];
    for id in ids {
        Device::new(id).register(&env).await;
    }
    b.guard(async {
        let owner = env.handle.info.owner_email.clone();
        let password = env.handle.owner_password().unwrap();
        let secret = env.handle.owner_totp_secret().unwrap();
        sign_in(&b, &env, &owner, password.expose(), &env.totp_code(&secret)).await;
        assert_eq!(count(&b, "input.bulk-pick").await, 4);
        // One row ticked with the keyboard (Tab to its box, Space), one with a click.
        tab_to(&b, "pick-unit-2").await;
        press(&b, " ").await;
        assert!(checked(&b, "#pick-unit-2").await);
        click(&b, "#pick-unit-4").await;
        assert!(checked(&b, "#pick-unit-4").await);
        shots(&b, "bulk-list").await;
        tab_to(&b, "bulk-selected").await;
        press(&b, ENTER).await;

        // The confirmation: the count, then reason, code, tick, button in Tab order.
        wait_text(&b, "h1", "Revoke 2 devices").await;
        wait_text(&b, "#bulk-count", "2").await;
        // Past the sign-in's grace, so the code is checked.
        env.clock.advance(std::time::Duration::from_secs(11 * 60));
        shots(&b, "bulk-confirm").await;
        tab_to(&b, "bulk-reason").await;
        press(&b, "site closed").await;
        press(&b, TAB).await;
        assert_eq!(focused_id(&b).await, "bulk-totp");
        press(&b, &env.totp_code(&secret)).await;
        press(&b, TAB).await;
        assert_eq!(focused_id(&b).await, "bulk-confirm");
        press(&b, " ").await;
        press(&b, TAB).await;
        assert_eq!(focused_id(&b).await, "bulk-revoke-button");
        press(&b, ENTER).await;

        // The progress page reaches done (htmx polls it while it runs).
        wait_text(&b, "h1", "Bulk revocation").await;
        wait_text(&b, "#bulk-done", "Done").await;
        wait_text(&b, "#bulk-revoked", "2 of 2").await;
        shots(&b, "bulk-progress").await;

        // The rows show revoked; the others stay active and selectable.
        b.client
            .goto(&format!("{}/dashboard/devices", env.handle.http_url))
            .await
            .unwrap();
        wait_text(&b, "h1", "Devices").await;
        assert_eq!(count(&b, "input.bulk-pick").await, 2);
        assert_eq!(count(&b, "#pick-unit-2").await, 0);
        assert_eq!(count(&b, "#pick-unit-1").await, 1);
        let revoked = b
            .client
            .find_all(Locator::Css("tbody .pill.bad"))
            .await
            .unwrap()
            .len();
        assert_eq!(revoked, 2);
        let mut states = Vec::new();
        for id in ids {
            states.push(state_of(&env, id).await);
        }
        assert_eq!(states, ["active", "revoked", "active", "revoked"]);
    })
    .await;
    b.close().await;
    env.handle.shutdown().await;
}
