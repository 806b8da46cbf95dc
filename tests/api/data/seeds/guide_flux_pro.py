import requests
import os
API_KEY = os.environ["BFL_API_KEY"]
url = "https://api.bfl.ai/v1/flux-pro-1.1"
payload = {
    "prompt": "A serene mountain lake at golden hour, photorealistic, 8k detail",
    "width": 1024,
    "height": 1024,
    "steps": 28,
    "guidance": 3.5
}
headers = {
    "Authorization": f"Bearer {API_KEY}",
    "Content-Type": "application/json"
}
response = requests.post(url, json=payload, headers=headers)
if response.status_code == 200:
    result = response.json()
    image_url = result["images"][0]["url"]
    print(f"Image generated: {image_url}")
else:
    print(f"Error: {response.status_code} - {response.text}")
