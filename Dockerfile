# The Astro project's image (`astro dev start`, `astro deploy`). Astro Runtime 3.3-8 ships Airflow 3.3.2, the
# version requirements.txt pins. Its -python-3.12 build, because requirements.txt and constraints.txt are pinned for
# Python 3.11/3.12 (the runtime's default Python on 3.3 is 3.14).
FROM astrocrpublic.azurecr.io/runtime:3.3-8-python-3.12

# The runtime's ONBUILD steps have run at this point, in this order: packages.txt (apt; it lists none),
# requirements.txt (pip), then `COPY --chown=astro:0 . .` of the project less .dockerignore into
# /usr/local/airflow. requirements.txt is installed before the project arrives, so the provider cannot be a line in
# it: it is installed here from plugins/, with requirements.txt again under constraints.txt (the transitive pins
# `make setup` installs). tests/test_deploy.py replays these steps.
USER root
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt ./plugins
USER astro
# The import's files and the tenant's budget under `astro dev start` (a volume the containers share, see
# docker-compose.override.yml); a deployment points CXONE_IMPORT_STORAGE_BASE at object storage instead.
RUN mkdir -p /usr/local/airflow/cxone

# The DAG imports include.cxone_dag (and its tasks include.cxone_import), the tasks and the report plugin's app
# cxone_runs (plugins/, not part of the provider distribution): the project folder and plugins/ on the path for every
# component, as scripts/env.sh does locally.
ENV PYTHONPATH=/usr/local/airflow:/usr/local/airflow/plugins${PYTHONPATH:+:${PYTHONPATH}}
