"""The KubeRay manifests parse and keep the properties docs/operations.md promises (no Kubernetes cluster runs here)."""

import shlex

import yaml

from tests.conftest import REPO

KUBERAY = REPO / "jobs" / "kuberay"


def test_the_rayjob_runs_the_job_entry_point_with_a_uri_output():
    (job,) = yaml.safe_load_all((KUBERAY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["generateName"]  # one RayJob per night
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[1].endswith("jobs/ray_job.py") and entry[2] == "run"
    assert "://" in entry[entry.index("--output") + 1]  # every node writes to shared storage
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no Worker actor on the head


def test_the_cronjob_forbids_overlapping_nights_and_creates_the_rayjob():
    docs = {d["kind"]: d for d in yaml.safe_load_all((KUBERAY / "cronjob.yaml").read_text())}
    cron = docs["CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = pod["containers"][0]["args"][0]
    assert "kubectl create -f /manifests/rayjob.yaml" in script and "jobDeploymentStatus" in script
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    (rule,) = docs["Role"]["rules"]
    assert rule["resources"] == ["rayjobs"] and {"create", "get"} <= set(rule["verbs"])
