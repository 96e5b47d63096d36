"""The what-if explorer: `streamlit run app.py` (or `testbed explore`).

Only layout and widgets live here; building the scenario, validating it, running and comparing
are in :mod:`testbed.explore`, and the figures in :mod:`testbed.report.plots`.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from testbed import explore
from testbed.report import plots
from testbed.report.html import observation_summary, observed_frame, verdict_rows
from testbed.report.markdown import outcome_counts
from testbed.spec import Scenario, SpecError
from testbed.topology import LEVELS, Topology

st.set_page_config(page_title="testbed explorer", layout="wide")


def load_base() -> tuple[Scenario, str]:
    """The scenario the knobs start from, and a token that changes when it does (widget keys)."""
    st.sidebar.header("Scenario")
    catalog = explore.scenario_catalog()
    names = list(catalog)
    source = st.sidebar.radio("source", ["catalog", "upload"], horizontal=True, key="source")
    if source == "upload":
        upload = st.sidebar.file_uploader("scenario YAML", type=["yaml", "yml"], key="upload")
        if upload is None:
            st.info("Upload a scenario file (paths in it resolve against faults/), or pick one from the catalog.")
            st.stop()
        text = upload.getvalue().decode("utf-8", errors="replace")
        try:
            return explore.load_uploaded(text, upload.name), "up-" + hashlib.sha1(text.encode()).hexdigest()[:8]
        except SpecError as exc:
            st.error(str(exc))
            st.stop()
    name = st.sidebar.selectbox("catalog scenario", names, index=names.index(explore.DEFAULT_SCENARIO), key="scenario")
    return Scenario.from_yaml(catalog[name]), name


def knob_widgets(base: Scenario, token: str) -> explore.Knobs:
    """Every knob, starting at the scenario's values; keys carry ``token`` so they reset with it."""
    k = explore.knobs_from(base)
    key = lambda name: f"{token}:{name}"  # noqa: E731 - one short helper for many widgets
    sb = st.sidebar
    with sb.expander("Run", expanded=True):
        k.duration = st.number_input("duration (s)", min_value=1.0, value=float(k.duration), step=30.0, key=key("duration"))
        k.seed = int(st.number_input("seed", min_value=0, value=int(k.seed), step=1, key=key("seed")))
    with sb.expander("Load", expanded=True):
        if k.rate is not None:
            k.rate = st.number_input("arrival rate (requests/s)", min_value=0.0, value=float(k.rate), key=key("rate"))
        else:
            st.caption("trace replay: the rate is the trace's")
        if k.burstiness is not None:
            k.burstiness = st.slider("burstiness (CV of gaps; 1 = Poisson)", 0.2, 5.0, float(k.burstiness), 0.1, key=key("cv"))
        if k.agent_share is not None:
            k.agent_share = st.slider("agent session share", 0.05, 1.0, float(k.agent_share), 0.05, key=key("agents"))
    with sb.expander("Replicas per region"):
        k.replicas = {
            region: int(st.number_input(region, min_value=1, value=n, step=1, key=key(f"replicas:{region}")))
            for region, n in k.replicas.items()
        }
    with sb.expander("Batching"):
        k.batching = st.selectbox("policy", ["continuous", "micro"], index=["continuous", "micro"].index(k.batching), key=key("batching"))
        k.max_batch = int(st.number_input("max batch (sequences)", min_value=1, value=int(k.max_batch), key=key("max_batch")))
        if k.batching == "micro":
            k.max_delay = st.number_input("max queue delay (s)", min_value=0.0, value=float(k.max_delay), step=0.005, format="%.3f", key=key("delay"))
            k.adaptive = st.toggle("adaptive delay", value=k.adaptive, key=key("adaptive"))
            if k.adaptive:
                k.target_latency = st.number_input("target latency (s)", min_value=0.01, value=float(k.target_latency or 2.0), key=key("target"))
    with sb.expander("Routing and resilience", expanded=True):
        policies = ["round_robin", "least_outstanding", "power_of_two", "region_affine"]
        k.routing = st.selectbox("routing", policies, index=policies.index(k.routing), key=key("routing"))
        k.failover = st.toggle("failover to other regions", value=k.failover, key=key("failover"))
        k.fallback_tier = st.toggle("fallback tier", value=k.fallback_tier, key=key("fallback"))
        k.max_attempts = int(st.number_input("attempts per request (1 = no retries)", min_value=1, max_value=10, value=k.max_attempts, key=key("attempts")))
        k.hedging = st.toggle("hedging", value=k.hedging, key=key("hedging"))
        k.health_period = st.number_input("health-check period (s)", min_value=0.1, value=float(k.health_period), key=key("health"))
    with sb.expander("Failure rates (MTBF / MTTR per domain)"):
        processes = {}
        for level in explore.PROCESS_LEVELS:
            own = k.processes.get(level)
            on = st.checkbox(f"{level} failures", value=own is not None, key=key(f"proc:{level}"))
            if on:
                cols = st.columns(2)
                mtbf = cols[0].text_input("MTBF", value=str((own or {}).get("mtbf", "8h")), key=key(f"mtbf:{level}"))
                mttr = cols[1].text_input("MTTR", value=str((own or {}).get("mttr", "30min")), key=key(f"mttr:{level}"))
                processes[level] = explore.failure_process(level, mtbf, mttr, own)
        k.processes = processes
    with sb.expander("Scripted faults", expanded=True):
        k.scripted = scripted_faults(base, k.scripted, key)
    return k


def scripted_faults(base: Scenario, own: list[dict], key) -> list[dict]:
    """The scenario's scripted faults (each can be dropped) plus faults added on the timeline."""
    added = st.session_state.setdefault(key("added"), [])
    kept = [spec for i, spec in enumerate(own) if st.checkbox(explore.describe_fault(spec), value=True, key=key(f"keep:{i}"))]
    kept += [spec for i, spec in enumerate(added) if st.checkbox(explore.describe_fault(spec), value=True, key=key(f"added:{i}"))]
    st.markdown("**add a fault**")
    kind = st.selectbox("kind", list(explore.FAULT_PARAMETERS), key=key("new:kind"))
    topology = Topology.from_spec(base.topology)
    if kind in explore.NETWORK_KINDS:
        region = st.selectbox("clients of region", topology.regions, key=key("new:region"))
        target = f"clients:{region} <-> {region}"
    else:
        domains = [d for level in LEVELS[1:-1] for d in topology.failure_domains(level)]
        target = st.selectbox("target (failure domain)", domains, key=key("new:target"))
    cols = st.columns(2)
    at = cols[0].number_input("at (s)", min_value=0.0, value=60.0, step=10.0, key=key("new:at"))
    duration = cols[1].number_input("duration (s)", min_value=1.0, value=60.0, step=10.0, key=key("new:duration"))
    parameter = explore.FAULT_PARAMETERS[kind]
    value = st.number_input(parameter, value=0.5, key=key("new:value")) if parameter else None
    if st.button("add fault", key=key("new:add")):
        try:
            added.append(explore.fault_spec(kind, target, at, duration, value))
            st.rerun()
        except SpecError as exc:
            st.error(str(exc))
    return kept


def run_with_progress(scenario: Scenario):
    """Simulate (or fetch the cached run), with a progress bar while it runs."""
    bar = st.progress(0.0, text=f"simulating {scenario.name}…")
    result = explore.run(scenario, progress=lambda f: bar.progress(min(max(f, 0.0), 1.0), text=f"simulating {scenario.name}… {f:.0%}"))
    bar.empty()
    return result


def margin_words(passed: bool, margin: str) -> str:
    """A verdict's margin as a person says it: "pass, 910 ms to spare" or "FAIL, 3.2% short"."""
    if margin == "n/a":
        return "pass" if passed else "FAIL: nothing observed"
    return f"pass, {margin} to spare" if passed else f"FAIL, {margin.lstrip('-')} beyond the limit"


def show_verdicts(result) -> None:
    counts = outcome_counts(result.requests)
    failing = [v.objective for v in result.sla if not v.passed]
    if failing:
        st.error(f"SLA violated: {', '.join(failing)}")
    else:
        st.success("All SLAs met")
    cols = st.columns(max(1, len(result.sla)) + 1)
    cols[0].metric("requests", f"{len(result.requests):,}", help=", ".join(f"{k} {v:,}" for k, v in counts.items()))
    for col, row, verdict in zip(cols[1:], verdict_rows(result.sla), result.sla):
        # The margin is said in words under the card: a Streamlit delta's arrow reads as "went
        # up" (worse, for a detection time) whatever the sign means.
        col.metric(row["objective"], row["observed"], help=f"limit {row['limit']}")
        col.caption(margin_words(verdict.passed, row["margin"]))
    table = pd.DataFrame(verdict_rows(result.sla))
    if not table.empty:
        st.dataframe(table.style.apply(lambda r: ["background-color: #fde8e8" if r["verdict"] == "FAIL" else ""] * len(r), axis=1), hide_index=True)


def show_results(result) -> None:
    show_verdicts(result)
    metric = st.radio("latency metric", ["ttft", "tpot", "e2e"], horizontal=True, key="metric")
    st.plotly_chart(plots.percentiles_over_time(result.requests, result.faults, metric), key="over_time")
    left, right = st.columns(2)
    left.plotly_chart(plots.latency_cdf(result.requests, metric), key="cdf")
    target = next((v.limit for v in result.sla if v.metric == "availability" and v.request_class is None), None)
    right.plotly_chart(plots.availability_by_region(result.requests, target=target), key="availability")
    alerts, scorecard = observed_frame(result, "alerts"), observed_frame(result, "scorecard")
    if not result.faults.empty:
        st.plotly_chart(plots.fault_timeline(result.faults, alerts), key="faults")
    st.subheader("Observability: scorecard and alerts")
    summary = observation_summary(result)
    if scorecard is None and alerts is None and summary is None:
        st.info("No alerts fired and no scorecard was recorded for this run.")
    if summary is not None:
        shown = {k: v for k, v in summary.items() if k in ("precision", "recall", "false_alerts_per_hour", "top1", "top3")}
        for col, (name, value) in zip(st.columns(len(shown)), shown.items()):
            col.metric(name.replace("_", " "), "n/a" if value != value else f"{value:.2f}")
    if scorecard is not None:
        st.dataframe(scorecard, hide_index=True)
    if alerts is not None:
        st.caption(f"{len(alerts)} alerts")
        st.dataframe(alerts.head(200), hide_index=True)


def show_downloads(scenario: Scenario, result) -> None:
    text = scenario.to_yaml()
    cols = st.columns(3)
    cols[0].download_button("scenario YAML", text, file_name=f"{scenario.name}.yaml", mime="application/yaml", on_click="ignore")
    cols[1].download_button("records CSV", lambda: explore.records_csv(result), file_name="requests.csv", mime="text/csv", on_click="ignore")
    cols[2].download_button("records parquet", lambda: explore.records_parquet(result), file_name="requests.parquet", on_click="ignore")
    st.code(text, language="yaml")


def show_compare(scenario: Scenario, result) -> None:
    st.caption("Pin this configuration as A, change knobs, and B (the current one) is compared on the same seed.")
    if st.button("pin current configuration as A", key="pin"):
        st.session_state["pinned"] = scenario.to_yaml()
    pinned = st.session_state.get("pinned")
    if pinned is None:
        st.info("Nothing pinned yet.")
        return
    a_scenario = explore.scenario_from_yaml(pinned).model_copy(update={"seed": scenario.seed})
    a = run_with_progress(a_scenario)
    diff = explore.scenario_diff(a_scenario, scenario)
    st.markdown("**what differs**" if len(diff) else "**A and B are the same configuration**")
    if len(diff):
        st.dataframe(diff, hide_index=True)
    verdicts = explore.verdict_diff(a, result)
    st.dataframe(verdicts.style.apply(lambda r: ["background-color: #fff3cd" if r["changed"] else ""] * len(r), axis=1), hide_index=True)
    runs = {"A": a.requests, "B": result.requests}
    st.dataframe(explore.outcome_comparison(a, result), hide_index=True)
    st.plotly_chart(plots.compare_over_time(runs, result.faults, "ttft"), key="ab_over_time")
    left, right = st.columns(2)
    # Failed requests count in the CDF (it tops out at the share answered): over successes only,
    # the configuration that fails its slow requests would look the faster.
    left.plotly_chart(plots.latency_cdf(runs, "ttft", by=None, counting_failures=True), key="ab_cdf")
    right.plotly_chart(plots.availability_by_region(runs), key="ab_availability")


def show_hunt(scenario: Scenario, result) -> None:
    if not explore.hunt_available():
        st.info("Failure hunting is not installed in this version (testbed.hunt); `testbed hunt` will bring it.")
        return
    cols = st.columns([1, 2, 2])
    budget = int(cols[0].number_input("budget (simulations)", min_value=1, max_value=500, value=20, key="hunt_budget"))
    kinds = cols[1].multiselect("fault kinds to draw", explore.hunt_kinds(), default=list(explore.hunt_kinds()), key="hunt_kinds")
    labels = [v.objective for v in result.sla if v.metric in {o.metric for o in scenario.sla}]
    objective = cols[2].selectbox("break which objective", ["any objective", *dict.fromkeys(labels)], key="hunt_objective")
    objectives = None if objective == "any objective" else [objective]
    failing = explore.already_failing(result, objectives)
    if failing:
        st.warning(
            f"These settings already fail without any added fault ({', '.join(failing)}): a hunt would only "
            "find that. Relax the load or the faults first, or pick an objective that passes."
        )
    st.caption("Hunted faults are added to the scenario's own; the search and the shrinking simulate at most 3 x budget runs.")
    if st.button("hunt for the smallest failing schedule", key="hunt", disabled=not kinds):
        bar = st.progress(0.0, text="hunting…")
        report = lambda phase, done, total: bar.progress(min(done / max(total, 1), 1.0), text=f"{phase}: {done}/{total} simulations")  # noqa: E731
        try:
            st.session_state["hunted"] = (scenario.to_yaml(), explore.hunt(scenario, budget, report, kinds, objectives))
        except (SpecError, ValueError) as exc:
            st.error(str(exc))
            return
        finally:
            bar.empty()
    hunted = st.session_state.get("hunted")
    if hunted is None or hunted[0] != scenario.to_yaml():
        return  # nothing hunted yet for these settings
    found = hunted[1]
    cost = f"{found.evaluations} simulations, {found.wall_time:.1f} s"
    if not found.found:
        st.success(f"No failing schedule found ({cost}).")
        return
    if not found.schedule:
        st.warning(f"These settings fail with no added fault ({cost}):")
    else:
        st.error(f"Minimal failing schedule ({cost}):")
        for fault in found.schedule:
            st.markdown("- " + explore.describe_fault(fault.model_dump(mode="json", by_alias=True)))
    st.dataframe(pd.DataFrame(verdict_rows(found.violations)), hide_index=True)
    st.download_button("minimal-failure.yaml", found.to_yaml(), file_name="minimal-failure.yaml", on_click="ignore")


def scenario_to_show(scenario: Scenario) -> Scenario:
    """The scenario whose results the page shows: the current settings if they run on every change
    (small what-ifs) or the Run button was pressed, else the last one run (the page says so)."""
    clicked = st.sidebar.button("Run simulation", type="primary", key="run", use_container_width=True)
    if clicked or explore.runs_on_change(scenario):
        st.session_state["ran"] = scenario
    ran = st.session_state.get("ran")
    if ran is None:
        expected = explore.expected_requests(scenario)
        size = f"about {expected:,} requests" if expected is not None else "a trace or time-varying load"
        st.info(f"This what-if simulates {size}: press **Run simulation** in the sidebar when the knobs are set.")
        st.stop()
    if ran.to_yaml() != scenario.to_yaml():
        st.warning("The knobs changed since the last run: press **Run simulation** to see them. The results below are for the previous settings.")
    return ran


def main() -> None:
    st.title("testbed explorer")
    st.caption(
        "What if… change the load, the fleet, the policies and the faults. Small what-ifs are simulated on "
        f"each change; bigger ones (over {explore.AUTO_RUN_REQUESTS:,} requests) when you press Run."
    )
    base, token = load_base()
    knobs = knob_widgets(base, token)
    try:
        scenario, notes = explore.build_scenario(base, knobs)
    except SpecError as exc:
        st.error(f"These settings are not a valid scenario:\n\n{exc}")
        st.stop()
    for note in notes:
        st.warning(note)
    scenario = scenario_to_show(scenario)
    result = run_with_progress(scenario)
    results, topology, compare, hunt, spec = st.tabs(["Results", "Topology", "Compare A/B", "Hunt", "Scenario YAML and records"])
    with results:
        show_results(result)
    with topology:
        st.plotly_chart(plots.topology_graph(Topology.from_spec(scenario.topology)), key="topology")
    with compare:
        show_compare(scenario, result)
    with hunt:
        show_hunt(scenario, result)
    with spec:
        show_downloads(scenario, result)


main()
