# The merge-request loop (docs/ci.md): the reviewers' report, the evaluation gate, and an
# offline check of .gitlab-ci.yml with gitlab-ci-local (installed into .cache/node).
#   make report [BASE=origin/main]   make gate   make ci-jobs
.PHONY: report gate ci-tools ci-jobs

BASE ?= main
GITLAB_CI_LOCAL_VERSION := 4.73.0
NODE_TOOLS := .cache/node
GITLAB_CI_LOCAL := $(NODE_TOOLS)/node_modules/.bin/gitlab-ci-local
GITLAB_CI_LOCAL_STAMP := $(NODE_TOOLS)/.gitlab-ci-local-$(GITLAB_CI_LOCAL_VERSION)

report: setup ## Write reports/report.md: the workspace against BASE (default: main)
	mlpipe report --base $(BASE)

gate: setup ## Check reports/metrics.json against params.yaml's gate (and the champion)
	mlpipe gate

ci-tools: $(GITLAB_CI_LOCAL_STAMP) ## Install gitlab-ci-local into .cache/node (needs Node.js 20)

$(GITLAB_CI_LOCAL_STAMP):
	npm install --prefix $(NODE_TOOLS) --no-audit --no-fund --loglevel=error \
	  gitlab-ci-local@$(GITLAB_CI_LOCAL_VERSION)
	touch $@

ci-jobs: ci-tools ## List the jobs of a merge-request pipeline and of a main pipeline
	@echo "--- merge request into main"
	@$(GITLAB_CI_LOCAL) --list --variable CI_PIPELINE_SOURCE=merge_request_event \
	  --variable CI_MERGE_REQUEST_TARGET_BRANCH_NAME=main --unset-variable CI_COMMIT_BRANCH \
	  --ignore-predefined-vars CI_PIPELINE_SOURCE,CI_COMMIT_BRANCH 2>/dev/null
	@echo "--- main"
	@$(GITLAB_CI_LOCAL) --list --variable CI_PIPELINE_SOURCE=push --variable CI_COMMIT_BRANCH=main \
	  --ignore-predefined-vars CI_PIPELINE_SOURCE,CI_COMMIT_BRANCH 2>/dev/null
