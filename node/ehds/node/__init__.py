"""The node agent: runs approved analyses on its own OMOP CDM and releases only what its
policy allows.

    service.py     the process: load and check config + policy, health server, run until a
                   signal (`ehds node serve`), `check` (`ehds node check`)
    agent.py       NodeAgent: dial out, Hello/Welcome, heartbeats, react to coordinator
                   messages, re-send what is not receipted, reconnect with backoff
    link.py        the one module that touches gRPC/protobuf: a stream as model dataclasses
    runner.py      tasks on worker threads: admit (permit, researcher, analysis), validate
                   (registry, parameters, deadline), compute, store the result (held or
                   released) or the outcome; cancel and deadline
    cdm_access.py  the CDM as a task sees it: interruptible queries, "CDM unavailable" test
    state.py       the node's SQLite state (tasks, result outbox, replay memory, release
                   decisions, audit chain), migrated by Alembic (state_db.py, state_schema.py,
                   migrations/)
    policy.py      policy.yaml: pinned HDAB keys, researchers, analyses and release modes,
                   retention; admission.py the rules a task must pass (one implementation,
                   also behind policy_explain.py, `ehds node policy explain`)
    assignment_check.py  the coordinator's signature on assignments, rejection codes
    audit_trail.py the node's audit chain: its writer and what each entry says
    review.py      `ehds node review`: held results, release/reject decisions
    upkeep.py      applying release decisions, the retention sweep
    profile.py     what Hello announces; identity.py the node's name from its certificate
    backoff.py, metrics.py, errors.py (fixed outcome texts), config.py

Programmatic use (tests, embedding):

    state = NodeState.open(config.state)
    agent = NodeAgent(config, load_site_policy(config.policy), state, registry=...)
    await agent.run()          # until agent.stop(), from any thread
    state.close()
"""
