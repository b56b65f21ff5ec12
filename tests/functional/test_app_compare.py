"""The arm comparison with the real model: each arm in its own engine process, side by side."""

from __future__ import annotations

from app.settings import Settings
from app.ui import create_app
from app.ui.screens import CompareScreen
from app.ui.widgets import ArmPanel
from app_pilot import wait_for


async def test_compare_renders_three_arms_and_saves_a_report(model_path, app_dirs, short_document):
    settings = Settings(n_ctx=512, max_tokens=16, n_threads=2)
    app = create_app(settings, [short_document], model_path)
    async with app.run_test(size=(140, 40)) as pilot:
        screen = app.chat_screen
        await wait_for(pilot, lambda: screen.state == "ready", 120, "the document to be prefilled")
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), 10, "the comparison view")
        compare = app.screen
        compare.query_one("#compare-question").value = "Who built the lighthouse of Velmora?"
        await pilot.click("#compare-run")
        await wait_for(pilot, lambda: bool(compare.results), 240, "three arms to answer")

        panels = list(compare.query(ArmPanel))
        assert [p.arm for p in panels] == ["f16", "q8_0", "d2"]
        by_arm = {r.arm: r for r in compare.results}
        assert by_arm["f16"].ok and "Ardel" in by_arm["f16"].answer
        assert by_arm["q8_0"].ok and by_arm["q8_0"].token_match is not None
        q8 = by_arm["q8_0"]  # agreement is token by token: identical, or a departure at the shared prefix's end
        assert q8.identical == (q8.departs_at is None) and (q8.identical or q8.departs_at == q8.shared_prefix)
        # d2 answers once the D2 cache is built in; until then it says why it is unavailable
        assert by_arm["d2"].status in ("done", "unavailable")
        if by_arm["d2"].status == "unavailable":
            assert by_arm["d2"].reason
            assert "unavailable" in str(panels[2].query_one(".arm-status").render())
        for panel in panels:
            assert panel.result.status == by_arm[panel.arm].status
        assert "peak VRAM" in str(panels[0].query_one(".arm-stats").render())

        await pilot.press("ctrl+s")
        assert compare.report_path is not None and compare.report_path.is_file()
        report = compare.report_path.read_text()
        assert "| f16 | done" in report and "## q8_0" in report and "Ardel" in report
        assert "same answer" not in report and "shared prefix" in report
        await pilot.press("escape")
        assert app.screen is screen
