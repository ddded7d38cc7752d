"""Offline validation of a Ray cluster-launcher file (``cluster.yaml``).

``check_cluster_config`` runs the same two steps ``ray up`` runs before it talks to the cloud --
``ray.autoscaler._private.util.prepare_config`` (merge with the provider's ``defaults.yaml`` shipped
in the Ray package, fill per-node-type min/max workers) and ``validate_config`` (JSON schema
``ray/autoscaler/ray-schema.json`` of the installed Ray) -- and skips the steps that need the cloud
(``fillout_available_node_types_resources``, which asks EC2 for instance types, and the provider's
``bootstrap_config``, which creates keys, IAM roles and security groups). Nothing here opens a
network connection.

On top of Ray's checks it enforces what Ray's schema lets through:

* node-type ``resources`` must be whole numbers (Python ``int``, not ``bool``, ``>= 0``): the schema
  says ``integer`` but ``jsonschema`` accepts ``1.0``; fractional GPUs belong in a study's per-trial
  resources, not in node types;
* AWS ``provider`` keys must be ones Ray reads (the schema allows any key there, so a typo such as
  ``cache_stoped_nodes`` would silently fall back to the default).

``node_config`` is passed verbatim to the cloud API (boto3 ``create_instances`` on AWS) and is only
checked by the cloud at ``ray up``.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

# Provider keys the AWS node provider and the autoscaler read in Ray 2.60 that the schema does not
# declare under `provider.properties` (the declared ones are taken from the schema at run time).
# Names from ray.autoscaler._private.aws.{config,node_provider}, ray.autoscaler._private.commands
# / updater (use_external_head_ip) and ray.autoscaler._private.constants.
_AWS_EXTRA_PROVIDER_KEYS = frozenset({
    "aws_credentials",
    "key_pair",
    "use_external_head_ip",
    "disable_launch_config_check",
    "foreground_node_launch",
    "worker_liveness_check",
})


def _ray_validation_functions():
    """Ray's ``prepare_config`` and ``validate_config``; ImportError naming the Ray version if absent."""
    import ray

    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as e:  # moved or renamed in another Ray version
        raise ImportError(
            f"ray {ray.__version__} has no ray.autoscaler._private.util.prepare_config/"
            f"validate_config (checked against ray 2.60.0): {e}"
        ) from e
    return prepare_config, validate_config


def _ray_schema() -> dict:
    import json

    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


def load_cluster_config(path: str | os.PathLike) -> dict:
    """Parse a cluster YAML file into a dict (ValueError if it is not a YAML mapping)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a cluster config must be a YAML mapping, got {type(data).__name__}")
    return data


def check_integer_resources(config: Mapping[str, Any], source: str = "cluster config") -> None:
    """ValueError naming node type and resource for any non-integer or negative node resource."""
    node_types = config.get("available_node_types")
    if not isinstance(node_types, Mapping):
        return  # Ray's own validation reports the missing/ill-typed section
    for name, node_type in node_types.items():
        resources = node_type.get("resources", {}) if isinstance(node_type, Mapping) else {}
        if not isinstance(resources, Mapping):
            raise ValueError(f"{source}: node type {name!r}: resources must be a mapping, "
                             f"got {resources!r}")
        for resource, amount in resources.items():
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise ValueError(
                    f"{source}: node type {name!r}: resource {resource!r} = {amount!r} is not a "
                    "whole number >= 0; node resources must be integers (ask for fractional "
                    "GPUs per trial in the search space's resources, not per node)"
                )


def check_provider_keys(config: Mapping[str, Any], schema: Mapping[str, Any],
                        source: str = "cluster config") -> None:
    """ValueError for an AWS ``provider`` key that Ray does not read (typically a typo)."""
    provider = config.get("provider")
    if not isinstance(provider, Mapping) or provider.get("type") != "aws":
        return
    declared = set(schema["properties"]["provider"].get("properties", {}))
    allowed = declared | _AWS_EXTRA_PROVIDER_KEYS
    unknown = sorted(k for k in provider if k not in allowed and not str(k).startswith("_"))
    if unknown:
        raise ValueError(
            f"{source}: unknown provider key(s) {', '.join(map(repr, unknown))} for provider "
            f"type 'aws' (Ray would ignore them); known keys: {', '.join(sorted(allowed))}"
        )


def check_cluster_config(config: str | os.PathLike | Mapping[str, Any]) -> dict:
    """Validate a cluster-launcher config offline; return Ray's prepared (defaults-merged) config.

    ``config`` is a path to a YAML file or an already-loaded mapping (not modified). Raises
    ValueError for anything ``ray up`` would reject before contacting the cloud (unknown or
    misspelt keys, wrong types, head type not among the node types, sum of min_workers above
    max_workers, ...) and for non-integer node resources or unknown AWS provider keys. The
    underlying ``jsonschema.ValidationError`` from Ray, if any, is chained as ``__cause__``.
    """
    if isinstance(config, Mapping):
        source, raw = "cluster config", copy.deepcopy(dict(config))
    else:
        source, raw = str(config), load_cluster_config(config)

    prepare_config, validate_config = _ray_validation_functions()
    import jsonschema  # Ray's validate_config needs it; part of ray[default]/ray[tune]

    # Ours first on the raw file: the message names the node type and resource.
    check_integer_resources(raw, source)
    if not isinstance(raw.get("provider"), Mapping) or "type" not in raw["provider"]:
        raise ValueError(f"{source}: 'provider' with a 'type' is required")
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "<top level>"
        raise ValueError(f"{source}: rejected by Ray's cluster schema at {where}: {e.message}") from e
    except (KeyError, AssertionError, NotImplementedError) as e:
        raise ValueError(f"{source}: rejected by Ray's config preparation: "
                         f"{type(e).__name__}: {e}") from e
    # validate_config raises ValueError itself for cross-field errors (head type, min/max workers).
    check_integer_resources(prepared, source)  # also the node types merged in from defaults
    check_provider_keys(prepared, _ray_schema(), source)
    return prepared
