"""The node agent: runs approved analyses on its own OMOP CDM and releases only what its
policy allows.

    service.py     the process: load and check config + policy, health server, run until a
                   signal (`ehds node serve`), `check` (`ehds node check`)
    agent.py       NodeAgent: dial out, Hello/Welcome, heartbeats, react to coordinator
                   messages, re-send what is not receipted, reconnect with backoff
    link.py        the one module that touches gRPC/protobuf: a stream as model dataclasses
    runner.py      tasks on worker threads: validate (policy, registry, parameters, deadline),
                   compute, store the result or the outcome; cancel and deadline
    cdm_access.py  the CDM as a task sees it: interruptible queries, "CDM unavailable" test
    state.py       the node's SQLite state (tasks, result outbox), migrated by Alembic
                   (state_schema.py, migrations/)
    profile.py     what Hello announces; identity.py the node's name from its certificate
    backoff.py, metrics.py, errors.py (fixed outcome texts), config.py, policy.py

Programmatic use (tests, embedding):

    state = NodeState.open(config.state)
    agent = NodeAgent(config, load_policy(config.policy), state, registry=...)
    await agent.run()          # until agent.stop(), from any thread
    state.close()
"""
