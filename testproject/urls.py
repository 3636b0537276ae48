"""URLs of the test/demo site."""

from django.contrib import admin
from django.urls import include, path

from testproject import jobs, views

urlpatterns = [
    path("", views.home, name="home"),
    path("work/", views.work, name="work"),
    path("jobs/start/", jobs.start_job, name="start-job"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    # The library's live console (logs/) and its SSE stream (logs/stream/).
    path("logs/", include("redis_logstream.urls")),
]
